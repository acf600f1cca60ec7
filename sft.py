#!/usr/bin/env python
"""Supervised fine-tuning (stage 1 of the pipeline) with TRL's SFTTrainer.

Trains a causal LM on prompt/completion data from any SFT schema the toolkit reads (stack-exchange-paired
``question``/``response_j``, chat ``messages``, Alpaca, ``prompt``/``response``, ...), with LoRA by default
(``--use_peft False`` for full fine-tuning) and the loss on the completion only. Writes an adapter or a full
model (safetensors) plus the tokenizer to ``--output_dir``, TensorBoard logs, and ``all_results.json``
(runtime, tokens/s, train loss, eval loss and perplexity).

With no ``--model_name_or_path`` / ``--dataset_name`` it trains the embedded tiny Llama on the toy task,
offline. optimum-habana's `examples/trl` command works as written (a local path in place of the hub id off-hub):

    python sft.py --model_name_or_path google/gemma-3-270m --dataset_name lvwerra/stack-exchange-paired \\
        --output_dir ./sft_sanity --do_train --max_steps 50 --per_device_train_batch_size 2 \\
        --gradient_accumulation_steps 2 --learning_rate 3e-5 \\
        --lora_target_modules q_proj k_proj v_proj o_proj --bf16 [--use_habana --use_lazy_mode]
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from rlhfkit.cli import script_cli
from rlhfkit.data import DatasetArguments
from rlhfkit.device import DeviceArguments
from rlhfkit.errors import UserError
from rlhfkit.faults import RunArguments
from rlhfkit.hpu import HPUGraphArguments, StaticShapeArguments
from rlhfkit.modelargs import ModelArguments
from rlhfkit.training import make_trainer, open_run, train_and_save, trainer_parser, will_train

logger = logging.getLogger("sft")


@dataclass
class ScriptArguments(DatasetArguments, RunArguments, StaticShapeArguments, HPUGraphArguments):
    eval_split: str | None = field(
        default=None,
        metadata={"help": "Split to evaluate on with --do_eval; default: hold out --size_valid_set training rows."},
    )
    size_valid_set: str = field(
        default="5%",
        metadata={"help": "Rows held out for --do_eval when there is no --eval_split: a count (200) or a share (5%)."},
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use at most this many training rows."})


def make_parser_for_sft():
    from trl import SFTConfig

    # LoRA without dropout: 1.42x the tokens/s on the benchmark's 43M model, the same held-out loss and gold gain
    # (bench/results/cpu-2026-12-03-sft-lora-dropout.md); TRL's and peft's default is 0.05
    parser = trainer_parser(ScriptArguments, SFTConfig, __doc__, defaults={"padding_free": None, "lora_dropout": 0.0,
                                                                          "torch_compile": None})
    for action in parser._actions:
        if action.dest == "lora_dropout":
            action.help = ("Dropout on the LoRA path. Default here 0.0 (not TRL's 0.05): the dropout copies every "
                           "adapted layer's input, and at 0.05 it cost 30%% of SFT's tokens/s for no measured gain.")
        if action.dest == "padding_free":
            action.help = ("Pack each batch's rows into one row, no padding, attention per row (rlhfkit/attention.py; "
                           "flash-attention reads the rows itself). Default: on, except with static shapes "
                           "(--pad_max, --num_buckets, --pad_to_multiple_of), on Gaudi, on CUDA (per-row attention measured "
                           "slower than padded SDPA there) or with --packing.")
        if action.dest == "torch_compile":
            action.help = ("Compile the model with torch.compile. Default: automatic on CPU in one process: the "
                           "first 3 steps run uncompiled and timed, then the model is compiled if the steps left "
                           "would take at least 5 minutes (the compile pays back there; rlhfkit/compiling.py). "
                           "True compiles from the start, False never.")
    return parser


def held_out_size(spec: str, total: int) -> int:
    """Rows to hold out from ``total`` for a ``--size_valid_set`` of ``"200"`` or ``"5%"`` (at least one)."""
    text = spec.strip()
    try:
        count = math.ceil(total * float(text[:-1]) / 100) if text.endswith("%") else int(text)
    except ValueError:
        raise UserError(f"--size_valid_set {spec} is neither a row count nor a percentage like 5%") from None
    if not 0 < count < total:
        raise UserError(f"--size_valid_set {spec} leaves no rows to train on or evaluate ({total} rows): change it")
    return count


def load_data(script_args: ScriptArguments, training_args, tokenizer):
    from rlhfkit import data, defaults

    name, subset = defaults.dataset_for("finetune", script_args.dataset_name, script_args.subset)
    strict = script_args.error_on_invalid_rows
    limit = script_args.max_train_samples
    if training_args.do_eval and not script_args.eval_split and limit is not None:
        limit += held_out_size(script_args.size_valid_set, limit) + 1
    rows = data.load_canonical(name, "sft", subset, script_args.split, strict=strict, limit=limit)
    eval_rows = None
    if training_args.do_eval:
        if script_args.eval_split:
            eval_rows = data.load_canonical(name, "sft", subset, script_args.eval_split, strict=strict)
        else:
            parts = rows.train_test_split(test_size=held_out_size(script_args.size_valid_set, len(rows)),
                                          seed=training_args.seed)
            rows, eval_rows = parts["train"], parts["test"]
    if script_args.max_train_samples is not None:
        rows = rows.select(range(min(script_args.max_train_samples, len(rows))))
    train = data.render(rows, "sft", tokenizer)
    check_room_for_completions(train, tokenizer, training_args.max_length)
    evaluation = data.render(eval_rows, "sft", tokenizer) if eval_rows is not None else None
    logger.info("training rows: %d, evaluation rows: %s", len(train), len(evaluation) if evaluation else 0)
    return train, evaluation


def check_room_for_completions(train, tokenizer, max_length: int | None) -> None:
    """TRL truncates rows to ``max_length`` tokens and drops rows whose completion is cut off entirely: say so,
    and refuse a ``max_length`` that leaves no row to train on (instead of an empty sampler deep in torch)."""
    if not max_length:
        return
    from rlhfkit import schemas

    if schemas.has_chat_template(tokenizer) and len(train) and not isinstance(train[0]["prompt"], str):
        lengths = [len(tokenizer.apply_chat_template(row["prompt"], tokenize=True, return_dict=False)) for row in train]
    else:  # plain text, or rows the chat template already rendered (tool calls)
        lengths = [len(ids) for ids in tokenizer([row["prompt"] for row in train])["input_ids"]]
    cut = sum(n >= max_length for n in lengths)
    if cut == len(lengths):
        raise UserError(f"--max_length {max_length} is shorter than every example's prompt (the shortest has "
                        f"{min(lengths)} tokens), so no completion is left to learn: raise --max_length")
    if cut:
        logger.warning("%d of %d training rows have prompts of --max_length %d tokens or more: they teach nothing",
                       cut, len(lengths), max_length)


def main(script_args: ScriptArguments, model_args: ModelArguments, device_args: DeviceArguments, training_args):
    from rlhfkit import attention, compiling, device, models
    from rlhfkit.results import write_results

    info, model_name, tokenizer_name, tokenizer = open_run(training_args, device_args, script_args, model_args,
                                                           "the trained model")
    padding_free = attention.choose_padding_free(training_args, info)
    training_args.padding_free = False  # TRL 1.16 refuses it with --max_length: attention.enable sets it after
    compile_setting, training_args.torch_compile = training_args.torch_compile, bool(training_args.torch_compile)
    do_train = will_train(training_args)
    train_dataset, eval_dataset = load_data(script_args, training_args, tokenizer)
    model = models.load_causal_lm(model_name, trust_remote_code=training_args.trust_remote_code,
                                  allow_pickle=model_args.allow_pickle, merge_adapter=True)
    models.check_vocabulary(model, tokenizer, model_name, tokenizer_name)
    peft_config = model_args.lora_config("CAUSAL_LM")
    trainer, shapes = make_trainer("sft", info, training_args, script_args, fuse_lora=model_args.fuse_lora,
                                   model=model, train_dataset=train_dataset, eval_dataset=eval_dataset,
                                   processing_class=tokenizer, peft_config=peft_config)
    batches = attention.enable(trainer, model, padding_free) or "padded"
    compiled = compiling.auto_compile(trainer, training_args, info, compile_setting)
    trainable = models.count_parameters(trainer.model, trainable_only=True)
    logger.info("model %s: %d parameters, %d trainable (%s)", model_name, models.count_parameters(trainer.model),
                trainable, "LoRA" if peft_config else "full fine-tuning")

    results = {"device": device.describe(info), "model": model_name, "use_peft": bool(peft_config), "batches": batches}
    if do_train:
        results.update(train_and_save(trainer, training_args, script_args))
        results.update(shapes.results())
        results.update(compiled())
    if eval_dataset is not None:
        metrics = trainer.evaluate()
        if "eval_loss" in metrics:
            metrics["eval_perplexity"] = math.exp(min(metrics["eval_loss"], 50.0))
        write_results(training_args.output_dir, "eval", metrics)
        results.update(metrics)
    write_results(training_args.output_dir, "all", results)
    logger.info("done: %s", {k: v for k, v in results.items() if "loss" in k or "per_second" in k})
    return results


cli = script_cli(make_parser_for_sft, main)


if __name__ == "__main__":
    cli()
