#!/usr/bin/env python
"""Compare the base model with its fine-tuned (PPO, DPO, ...) version on held-out prompts.

Every model answers the same prompts with the same sampling settings (``--generations_per_prompt`` answers
each); the reward model scores every answer, and on the toy task the gold judge too (a rule no model
trained on). Reported per model: mean / median / std reward, gold score, response length, the share of
answers that stopped (EOS), and the KL from the base measured on the model's own samples; between models:
the paired win rate (ties count one half) with a bootstrap confidence interval over prompts. ``--sft_model``
adds the SFT model as a third column (and win rates against it).

Writes to ``--output_dir``: ``comparison.json``, ``samples.jsonl`` (each prompt with every model's answer and
scores) and ``comparison.png`` (score distributions; with the PPO run's ``trainer_state.json`` beside the
fine-tuned model, its reward and KL curves). optimum-habana's `examples/trl` command:

    PT_HPU_LAZY_MODE=1 python compare_base_vs_ppo.py --base_model google/gemma-3-270m --finetuned_model ./ppo_sanity \\
        --reward_model ./rm_sanity_merged --dataset_name lvwerra/stack-exchange-paired --dataset_split train_prefs \\
        --num_samples 5

(stack-exchange-paired has only a ``train`` split per sub-folder: ``--dataset_split train`` there; by default the
prompts come from its ``data/evaluation`` sub-folder, or the embedded toy task's.)
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field

from rlhfkit.cli import make_parser, script_cli
from rlhfkit.device import DeviceArguments, PrecisionArguments
from rlhfkit.errors import UserError
from rlhfkit.hpu import HPUGraphArguments
from rlhfkit.sampling_args import SamplingSettings

logger = logging.getLogger("compare_base_vs_ppo")


@dataclass
class CompareArguments(SamplingSettings):
    """The models, the prompts and the judges; how every model is sampled: rlhfkit.sampling_args (no KL is
    measured under greedy decoding)."""

    finetuned_model: str | None = field(
        default=None, metadata={"help": "The fine-tuned model (e.g. ./ppo_sanity): a model folder, adapter folder or hub id."}
    )
    reward_model: str | None = field(
        default=None, metadata={"help": "The reward model that scores every answer (e.g. ./rm_sanity_merged)."}
    )
    base_model: str | None = field(
        default=None, metadata={"help": "The model before fine-tuning; default: the embedded tiny Llama."}
    )
    sft_model: str | None = field(default=None, metadata={"help": "Optional third model (the SFT model)."})
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Tokenizer for model folders saved without one (default: the base's)."}
    )
    reward_tokenizer_name: str | None = field(
        default=None, metadata={"help": "The reward model's tokenizer; default: its own, else the scored model's."}
    )
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Prompts: hub id, local file or folder; default: the embedded toy task (data/evaluation)."},
    )
    subset: str | None = field(
        default=None, metadata={"help": "Sub-folder (hub data_dir); default data/evaluation where the dataset has it."}
    )
    dataset_split: str = field(default="train", metadata={"help": "Split to read the prompts from."})
    num_samples: int = field(default=100, metadata={"help": "Prompts to compare on (the first ones of the split)."})
    input_max_length: int = field(default=256, metadata={"help": "Drop prompts longer than this many tokens."})
    gold_judge: str = field(
        default="auto",
        metadata={"help": "auto: the toy task's gold judge when every prompt is a toy question; toy; none; "
                  "MODULE:FUNC or FILE.py:FUNC (f(prompt, response) -> float)."},
    )
    confidence: float = field(default=0.95, metadata={"help": "Level of the win-rate confidence intervals."})
    output_dir: str = field(default="comparison", metadata={"help": "Where comparison.json, samples.jsonl and "
                                                                   "comparison.png go."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Run model code shipped with the checkpoints."})
    allow_pickle: bool = field(default=False, metadata={"help": "Allow pickle (.bin) weights."})


def validate(args: CompareArguments) -> None:
    from rlhfkit import models

    if not args.finetuned_model:
        raise UserError("--finetuned_model is required: the model to compare with the base (e.g. ./ppo_sanity)")
    if not args.reward_model:
        raise UserError("--reward_model is required: the reward model that scores the answers (e.g. ./rm_sanity_merged)")
    for name in ("num_samples", "generations_per_prompt", "max_new_tokens", "batch_size", "input_max_length"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1")
    args.check_sampling(args.do_sample, " (or pass --do_sample False for greedy decoding)")
    if not args.do_sample and args.generations_per_prompt > 1:
        raise UserError("--generations_per_prompt > 1 needs sampling: greedy decoding gives one answer per prompt")
    if not 0.5 <= args.confidence < 1:
        raise UserError("--confidence must be in [0.5, 1), e.g. 0.95")
    for flag, what in (("finetuned_model", "fine-tuned model"), ("base_model", "base model"),
                       ("sft_model", "SFT model")):
        if getattr(args, flag):
            models.check_model_source(getattr(args, flag), what)
    models.check_reward_model(args.reward_model, args.trust_remote_code)


def load_prompts(args: CompareArguments) -> list:
    from rlhfkit import data, defaults

    name, subset = defaults.dataset_for("evaluation", args.dataset_name, args.subset)
    rows = data.load_canonical(name, "prompt", subset, args.dataset_split, limit=args.num_samples)
    prompts = [row["prompt"] for row in rows]
    if len(prompts) < args.num_samples:
        logger.warning("%s has %d usable prompts, fewer than --num_samples %d", name, len(prompts), args.num_samples)
    return prompts


def main(args: CompareArguments, device_args: DeviceArguments, precision: PrecisionArguments,
         graphs: HPUGraphArguments | None = None):
    validate(args)
    from rlhfkit import compare, compare_report, device, hpu, models, scoring

    graphs = graphs or HPUGraphArguments()
    info, dtype, static = hpu.inference_setup(device_args, precision, graphs)
    prompts = load_prompts(args)
    gold, gold_name = compare.resolve_gold_judge(args.gold_judge, prompts)
    base_path = models.resolve_name(args.base_model)
    fallback = args.tokenizer_name_or_path or (base_path if models.has_own_tokenizer(base_path) else None)
    order = [("base", base_path)] + ([("sft", args.sft_model)] if args.sft_model else []) + [
        ("finetuned", args.finetuned_model)]

    def load(name, path):
        loaded = compare.load_model(name, path, fallback, dtype, info.torch_device, args.trust_remote_code,
                                    args.allow_pickle)
        if static:  # generation through a graph-wrapped view; the KL passes run the model itself, without graphs
            loaded.generator = hpu.wrap_for_inference(hpu.inference_view(loaded.model), info, True,
                                                      f"generation of the {name} model (static KV cache)")
        return loaded

    base = load("base", base_path)
    reward_model, reward_tok = scoring.load_reward_model(args.reward_model, args.reward_tokenizer_name,
                                                         base.tokenizer, dtype, info.torch_device,
                                                         args.trust_remote_code, args.allow_pickle)
    scoring.wrap_in_hpu_graph(reward_model, info, graphs.use_hpu_graphs)

    def scorer_for(tokenizer):
        return scoring.RewardModelScorer(reward_model, reward_tok, tokenizer, batch_size=args.batch_size,
                                         pad_multiple=args.input_max_length + args.max_new_tokens if static else None)

    # tokenizers first: a prompt too long for any model is dropped for all, so every comparison stays paired
    others = {name: load(name, path) for name, path in order[1:]}
    loaded = [base, *others.values()]
    prompts, ids = compare.prompt_ids(loaded, prompts, args.prompt_format, args.input_max_length)
    logger.info("comparing %s on %d prompts x %d answers (%s, %s), reward model %s, gold judge %s, on %s",
                ", ".join(f"{m.name}={m.path}" for m in loaded), len(prompts), args.generations_per_prompt,
                f"temperature {args.temperature}" if args.do_sample else "greedy", f"{args.max_new_tokens} new tokens",
                args.reward_model, gold_name or "none", info.type)
    samples = {}
    for model in loaded:
        samples[model.name] = compare.sample_model(model, prompts, ids[model.name], args, scorer_for, gold, base,
                                                   static_shapes=static)
    pairs = [("finetuned", "base")] + ([("sft", "base"), ("finetuned", "sft")] if args.sft_model else [])
    summary = compare_report.summarize(samples, pairs, args.confidence, args.seed)
    history = compare.find_training_log(args.finetuned_model)
    summary["settings"] = run_settings(args, len(prompts), gold_name, device.describe(info), history)
    print(compare_report.table(summary), flush=True)
    write_outputs(args.output_dir, summary, compare_report.sample_records(prompts, samples),
                  compare_report.plot(samples, history))
    return summary


def run_settings(args: CompareArguments, num_prompts: int, gold_name, device_description, history) -> dict:
    """What comparison.json records of how the comparison ran."""
    return {
        "num_prompts": num_prompts, "generations_per_prompt": args.generations_per_prompt,
        "do_sample": args.do_sample, "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p,
        "max_new_tokens": args.max_new_tokens, "seed": args.seed, "dataset_name": args.dataset_name or "embedded toy task",
        "subset": args.subset, "dataset_split": args.dataset_split, "reward_model": args.reward_model,
        "gold_judge": gold_name, "device": device_description,
        "training_log": os.path.join(args.finetuned_model, "trainer_state.json") if history else None,
    }


def write_outputs(output_dir: str, summary: dict, records: list, figure: bytes | None) -> None:
    """comparison.json, samples.jsonl and comparison.png: the three appear together, or not at all."""
    from rlhfkit import io

    with io.staging_dir(output_dir) as staging:
        io.write_json(os.path.join(staging, "comparison.json"), summary)
        io.write_text(os.path.join(staging, "samples.jsonl"),
                      "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        if figure is not None:
            io.write_bytes(os.path.join(staging, "comparison.png"), figure)
    logger.info("wrote comparison.json, samples.jsonl%s to %s", " and comparison.png" if figure else "", output_dir)


def build_parser():
    return make_parser((CompareArguments, DeviceArguments, PrecisionArguments, HPUGraphArguments),
                       description=__doc__)


cli = script_cli(build_parser, main)


if __name__ == "__main__":
    cli()
