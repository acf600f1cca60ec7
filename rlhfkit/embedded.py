"""The embedded default: a tiny Llama-style causal LM, a tokenizer trained offline, and the toy task data.

Every script falls back to it when no ``--model_name_or_path`` / ``--dataset_name`` is given, so the whole
pipeline runs offline. It is built on first use (a minute or two) into a cache folder, atomically: files are
written to a temporary sibling folder that is renamed into place when complete, so an interrupted build
never leaves a folder that looks finished. The model's weights are random (it is a *base* model that knows
nothing until pretrained, see below); the tokenizer is a byte-level BPE trained on the toy corpus, so any text encodes.

The model is a *base* model in the usual sense: briefly pretrained (:func:`pretrain`, a plain next-token loop
run until it answers on topic, one to three minutes on a CPU) on questions and answers of *uniform* quality, so it
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

VERSION = 7
# Copying the item from the question into the answer emerges as a phase change, and when it does depends on
# the CPU's float arithmetic: with a fixed 600 steps at lr 3e-3 one machine got 51/64 answers on topic and
# another 2/64 (the same loss, 0.96). So pretraining runs until the base model answers on topic (checked by
# greedy decoding of held-out questions every PRETRAIN_CHECK_EVERY steps), then anneals the learning rate.
PRETRAIN_MIN_STEPS = 300
PRETRAIN_MAX_STEPS = 1500
PRETRAIN_CHECK_EVERY = 100
PRETRAIN_COOLDOWN_STEPS = 100
PRETRAIN_ON_TOPIC = 0.9  # share of held-out questions answered about their item, greedy
PRETRAIN_BATCH = 32
PRETRAIN_LR = 1e-3  # at 3e-3 the phase change came late or not at all on an AMD EPYC
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


def on_topic_rate(model, tokenizer, n: int = 64) -> float:
    """Share of ``n`` held-out toy questions (not in any split) whose greedy answer names the asked item."""
    import random

    from rlhfkit import sampling

    questions = [toy.make_question(random.Random(f"pretrain-check/{i}")) for i in range(n)]
    greedy = sampling.generate_text(model, tokenizer, questions, max_new_tokens=40, batch_size=n)
    hits = [toy.gold_score(q, c[0]) > -1 for q, c in zip(questions, greedy.completions, strict=True)]
    return sum(hits) / n


def pretrain(model, tokenizer, seed: int = 0, max_steps: int = PRETRAIN_MAX_STEPS) -> dict:
    """Next-token training on the toy corpus (answers of uniform quality); returns what it did.

    A short warm-up, then a constant learning rate until the model answers on topic (the check runs every
    :data:`PRETRAIN_CHECK_EVERY` steps from :data:`PRETRAIN_MIN_STEPS` on), then a linear cool-down over
    :data:`PRETRAIN_COOLDOWN_STEPS`; never more than ``max_steps`` in all. A plain loop rather than a
    Trainer: no output folder, no logging machinery, deterministic for a seed on one machine.
    """
    import torch

    texts = toy.corpus(seed + 1)  # not the tokenizer's draw, same distribution
    encoded = [tokenizer(text + tokenizer.eos_token)["input_ids"] for text in texts]
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=PRETRAIN_LR, weight_decay=0.0)
    loss, on_topic, cooldown_from = float("nan"), None, None
    step = 0
    while step < max_steps:
        warm = min(1.0, (step + 1) / 10)
        cool = 1.0 if cooldown_from is None else max(0.0, 1 - (step - cooldown_from) / PRETRAIN_COOLDOWN_STEPS)
        for group in optimizer.param_groups:
            group["lr"] = PRETRAIN_LR * warm * cool
        model.train()
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
        optimizer.zero_grad(set_to_none=True)
        loss = out.loss.item()
        step += 1
        if step % 50 == 0 or step == 1:
            logger.info("pretraining the embedded base model: step %d (at most %d), loss %.3f", step, max_steps, loss)
        if cooldown_from is not None and step - cooldown_from >= PRETRAIN_COOLDOWN_STEPS:
            break
        if cooldown_from is None and step >= PRETRAIN_MIN_STEPS and step % PRETRAIN_CHECK_EVERY == 0:
            model.eval()
            on_topic = on_topic_rate(model, tokenizer)
            logger.info("pretraining the embedded base model: step %d, %.0f%% of answers on topic", step, 100 * on_topic)
            if on_topic >= PRETRAIN_ON_TOPIC:
                cooldown_from = step
    model.eval()
    on_topic = on_topic_rate(model, tokenizer)
    if on_topic < PRETRAIN_ON_TOPIC and max_steps >= PRETRAIN_MAX_STEPS:
        logger.warning("the embedded base model answers only %.0f%% of questions on topic after %d steps; SFT, reward "
                       "modeling and PPO will have less to build on", 100 * on_topic, step)
    return {"steps": step, "batch": PRETRAIN_BATCH, "lr": PRETRAIN_LR, "loss": loss, "on_topic": on_topic}


def build(output_dir: str, seed: int = 0, pretrain_steps: int = PRETRAIN_MAX_STEPS) -> str:
    """Build model, tokenizer and data into ``output_dir`` atomically; returns ``output_dir``.

    ``pretrain_steps`` caps pretraining; a cap below :data:`PRETRAIN_MIN_STEPS` gives a base model that has
    not learned the task's language (for tests of the build itself).
    """
    from rlhfkit import io

    try:
        with io.new_dir(output_dir) as staging:
            tokenizer = build_tokenizer(seed)
            model = build_model(tokenizer, seed)
            pretrained = pretrain(model, tokenizer, seed, pretrain_steps)
            model.save_pretrained(model_dir(staging), safe_serialization=True)
            tokenizer.save_pretrained(model_dir(staging))
            toy.write_dataset(staging, seed)
            info = {
                "version": VERSION,
                "seed": seed,
                "parameters": sum(p.numel() for p in model.parameters()),
                "vocab_size": len(tokenizer),
                "pretrain": pretrained,
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
