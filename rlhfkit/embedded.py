"""The embedded default: a tiny Llama-style causal LM, a tokenizer trained offline, and the toy task data.

Every script falls back to it when no ``--model_name_or_path`` / ``--dataset_name`` is given, so the whole
pipeline runs offline. It is built on first use (a few seconds) into a cache folder, atomically: files are
written to a temporary sibling folder that is renamed into place when complete, so an interrupted build
never leaves a folder that looks finished. The model's weights are random (it is a *base* model that knows
nothing until pretrained, see below); the tokenizer is a byte-level BPE trained on the toy corpus, so any text encodes.

The model is a *base* model in the usual sense: briefly pretrained (:func:`pretrain`, a plain next-token loop
of :data:`PRETRAIN_STEPS` steps, seconds on a CPU) on questions and answers of *uniform* quality, so it
speaks the toy language but has no preference for good answers. SFT on the preferred answers, reward
modeling and PPO then each have something real to add, as with a real pretrained model.

Build it explicitly with ``python -m rlhfkit.embedded --output_dir DIR`` (prints the paths).
"""

from __future__ import annotations

import argparse
import json
import logging
import os

from rlhfkit import toy

logger = logging.getLogger(__name__)

VERSION = 6
# copying the item from the question into the answer emerges after ~400-500 steps (a phase change)
PRETRAIN_STEPS = 600
PRETRAIN_BATCH = 32
PRETRAIN_LR = 3e-3
VOCAB_SIZE = 1024
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")  # ids 0, 1, 2: pad is distinct from EOS on purpose
MODEL_CONFIG = dict(
    hidden_size=192,
    intermediate_size=512,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=256,
    tie_word_embeddings=True,
)
CACHE_ENV = "RLHFKIT_CACHE"


def cache_root() -> str:
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "rlhfkit")


def default_dir(seed: int = 0) -> str:
    return os.path.join(cache_root(), f"embedded-v{VERSION}-seed{seed}")


def model_dir(root: str) -> str:
    return os.path.join(root, "model")


def dataset_dir(root: str) -> str:
    """The folder to pass as ``--dataset_name`` (with ``--subset data/finetune`` and friends)."""
    return root


def build_tokenizer(seed: int = 0):
    """A byte-level BPE tokenizer trained on the toy corpus, as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(toy.corpus(seed), trainer=trainer)
    bos = core.token_to_id("<s>")
    core.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        model_max_length=MODEL_CONFIG["max_position_embeddings"],
        clean_up_tokenization_spaces=False,
    )


def build_model(tokenizer, seed: int = 0):
    """A randomly initialised Llama model sized by :data:`MODEL_CONFIG` (about 2M parameters)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **MODEL_CONFIG,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def pretrain(model, tokenizer, seed: int = 0, steps: int = PRETRAIN_STEPS) -> float:
    """Next-token training on the toy corpus (answers of uniform quality); returns the last loss.

    A plain loop rather than a Trainer: no output folder, no logging machinery, deterministic for a seed.
    """
    import torch

    texts = toy.corpus(seed + 1)  # not the tokenizer's draw, same distribution
    encoded = [tokenizer(text + tokenizer.eos_token)["input_ids"] for text in texts]
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=PRETRAIN_LR, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: min(1.0, (i + 1) / 10) * (1 - i / steps))
    model.train()
    loss = float("nan")
    for step in range(steps):
        rows = [encoded[i] for i in torch.randint(len(encoded), (PRETRAIN_BATCH,), generator=generator).tolist()]
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), tokenizer.pad_token_id)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, : len(row)] = torch.tensor(row)
            mask[r, : len(row)] = 1
        out = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100))
        out.loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        loss = out.loss.item()
        if step % 50 == 0 or step == steps - 1:
            logger.info("pretraining the embedded base model: step %d/%d, loss %.3f", step + 1, steps, loss)
    model.eval()
    return loss


def build(output_dir: str, seed: int = 0, pretrain_steps: int = PRETRAIN_STEPS) -> str:
    """Build model, tokenizer and data into ``output_dir`` atomically; returns ``output_dir``.

    ``pretrain_steps`` below the default gives a base model that has not learned the task's language (for
    tests of the build itself).
    """
    from rlhfkit import io

    try:
        with io.new_dir(output_dir) as staging:
            tokenizer = build_tokenizer(seed)
            model = build_model(tokenizer, seed)
            pretrain_loss = pretrain(model, tokenizer, seed, pretrain_steps)
            model.save_pretrained(model_dir(staging), safe_serialization=True)
            tokenizer.save_pretrained(model_dir(staging))
            toy.write_dataset(staging, seed)
            info = {
                "version": VERSION,
                "seed": seed,
                "parameters": sum(p.numel() for p in model.parameters()),
                "vocab_size": len(tokenizer),
                "pretrain": {"steps": pretrain_steps, "batch": PRETRAIN_BATCH, "lr": PRETRAIN_LR,
                             "loss": pretrain_loss},
                "model": MODEL_CONFIG,
                "splits": toy.SPLITS,
            }
            with open(os.path.join(staging, "BUILD_INFO.json"), "w", encoding="utf-8") as handle:
                json.dump(info, handle, indent=2)
    except OSError:
        if not is_built(output_dir):
            raise
        # another process finished the same build first: its folder stands, ours is gone
    return output_dir


def is_built(root: str) -> bool:
    return os.path.isfile(os.path.join(root, "BUILD_INFO.json"))


def ensure(seed: int = 0) -> str:
    """The cached embedded default, built on first use; returns its root folder."""
    root = default_dir(seed)
    if not is_built(root):
        logger.info("building the embedded default (tiny Llama, offline tokenizer, toy data) in %s", root)
        if os.path.exists(root):  # a foreign or incomplete folder; never finished by us
            raise RuntimeError(f"{root} exists but is not a complete embedded build: remove it")
        build(root, seed)
    return root


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build the embedded default model, tokenizer and toy dataset.")
    parser.add_argument("--output_dir", help=f"where to build (default: the cache, ${CACHE_ENV} or ~/.cache/rlhfkit)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.output_dir:
        if os.path.exists(args.output_dir):
            raise SystemExit(f"error: {args.output_dir} already exists: choose a new --output_dir")
        root = build(args.output_dir, args.seed)
    else:
        root = ensure(args.seed)
    print(json.dumps({"root": root, "model": model_dir(root), "dataset": dataset_dir(root)}, indent=2))


if __name__ == "__main__":
    main()
