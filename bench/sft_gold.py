#!/usr/bin/env python
"""Benchmark (not a test): what an SFT lever costs in quality, on the toy task's gold judge.

    python bench/sft_gold.py --variant "--lora_dropout 0.0" [--seeds 42 1] [--steps 300] [--out DIR]
                             [--results bench/results] [--note TEXT]

``tests/test_sft.py``'s LoRA run (``sft.py`` on the embedded default, 300 steps of 16 rows at 2e-3, LoRA on the
attention projections), once with ``sft.py``'s defaults and once with the ``--variant`` flags added, per seed in
``--seeds`` (interleaved, so drift on a shared machine hits both). Each trained adapter is merged and judged like
the test judges it: 4 answers sampled at temperature 1 (seed 0) for each of the first 100 held-out questions,
scored by the gold judge no model saw; the base model's score is the reference. Printed side by side (gold gain
over the base, final training loss, non-padding tokens/s over the whole run, peak RSS) and written to
``<out>/sft_gold_results.json``; with ``--results DIR`` also ``DIR/cpu-<date>-sft-gold.{json,md}``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402 (bench/ is not a package: its programs import each other from their folder)
from common import REPO, machine_line, write_aside  # noqa: E402

PY = sys.executable
QUESTIONS, SAMPLES = 100, 4  # tests/test_sft.py's GOLD_QUESTIONS and GOLD_SAMPLES


def say(message: str) -> None:
    common.say(message, "sft_gold")


def train_args(steps: int) -> list[str]:
    """tests/test_sft.py's LoRA run (its ``lora_run`` fixture), with --seed added by the caller."""
    return ["--do_train", "--max_steps", str(steps), "--per_device_train_batch_size", "16", "--learning_rate", "2e-3",
            "--lora_target_modules", "q_proj", "k_proj", "v_proj", "o_proj", "--save_strategy", "no",
            "--disable_tqdm", "True", "--report_to", "none"]


def judge(root: str, adapter: str | None) -> float:
    """The sampled gold mean of the base model (``adapter`` None) or of the base with ``adapter`` merged."""
    from rlhfkit import toy
    from rlhfkit.models import load_causal_lm, load_tokenizer

    with open(os.path.join(root, "data", "evaluation", "train.jsonl"), encoding="utf-8") as handle:
        questions = [json.loads(line)["question"] for line in handle][:QUESTIONS]
    path = adapter or os.path.join(root, "model")
    model = load_causal_lm(path, merge_adapter=adapter is not None)
    return toy.sampled_gold(model, load_tokenizer(path), questions, samples=SAMPLES)


def one_run(name: str, flags: list[str], seed: int, args, commands: dict) -> dict:
    out = os.path.join(args.out, f"{'variant' if flags else 'defaults'}-seed{seed}")
    cmd = [PY, "sft.py", "--output_dir", out, "--overwrite_output_dir", "True", "--seed", str(seed),
           *train_args(args.steps), *flags]
    commands[f"{name} seed {seed}"] = shlex.join(cmd)
    figures = common.measured(cmd, f"{name} seed {seed}", out + ".log", echo=False, tag="sft_gold")
    with open(os.path.join(out, "trainer_state.json"), encoding="utf-8") as handle:
        history = json.load(handle)["log_history"]
    losses = [e["loss"] for e in history if "loss" in e]
    tokens = max(e.get("num_tokens", 0) for e in history)  # TRL's count of the non-padding tokens trained on
    runtime = next(e["train_runtime"] for e in history if "train_runtime" in e)
    return {"seed": seed, "gold": judge(args.root, out), "final_loss": statistics.mean(losses[-5:]),
            "tokens_per_second": tokens / runtime, "train_runtime": runtime,
            "peak_rss_mib": figures["max_rss_bytes"] / 2**20}


def table(rows: dict, base_gold: float) -> str:
    lines = [f"| sft.py | seeds | gold (base {base_gold:+.3f}) | gold gain over base (range) | training loss, last 5 "
             "logs | non-padding tokens/s (whole run) | train time | peak RSS |", "|---|---|---|---|---|---|---|---|"]
    for name, runs in rows.items():
        gains = [r["gold"] - base_gold for r in runs]
        mean = {key: statistics.mean(r[key] for r in runs)
                for key in ("gold", "final_loss", "tokens_per_second", "train_runtime", "peak_rss_mib")}
        lines.append(f"| {name} | {len(runs)} | {mean['gold']:+.3f} | {statistics.mean(gains):+.3f} "
                     f"({min(gains):+.3f} to {max(gains):+.3f}) | {mean['final_loss']:.3f} | "
                     f"{mean['tokens_per_second']:,.0f} | {mean['train_runtime']:.0f} s | {mean['peak_rss_mib']:,.0f} MiB |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", required=True, help="sft.py flags added to the defaults, e.g. '--lora_dropout 0.0'")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", default=os.path.join(REPO, ".bench", "sft-gold"))
    parser.add_argument("--results", help="also write cpu-<date>-sft-gold.{json,md} into this folder")
    parser.add_argument("--note", default="")
    args = parser.parse_args(argv)
    os.chdir(REPO)
    os.makedirs(args.out, exist_ok=True)
    sys.path.insert(0, REPO)
    import machine

    from rlhfkit import embedded

    args.root = embedded.ensure()
    started = time.perf_counter()
    commands = {"benchmark": shlex.join(["python", "bench/sft_gold.py", *(argv if argv is not None else sys.argv[1:])])}
    variants = {"defaults": [], args.variant: shlex.split(args.variant)}
    rows: dict[str, list[dict]] = {name: [] for name in variants}
    for seed in args.seeds:
        for name, flags in variants.items():
            r = one_run(name, flags, seed, args, commands)
            rows[name].append(r)
            say(f"{name}, seed {seed}: gold {r['gold']:+.3f}, loss {r['final_loss']:.3f}, "
                f"{r['tokens_per_second']:,.0f} tokens/s; {(time.perf_counter() - started) / 60:.1f} min so far")
    base_gold = judge(args.root, None)
    text = table(rows, base_gold)
    print("\n" + text, flush=True)
    out = {"machine": machine.describe("cpu"), "versions": machine.versions(), "steps": args.steps,
           "seeds": args.seeds, "variant": args.variant, "base_gold": base_gold, "results": rows,
           "commands": commands, "note": args.note, "total_seconds": time.perf_counter() - started}
    targets = [os.path.join(args.out, "sft_gold_results.json")]
    if args.results:
        os.makedirs(args.results, exist_ok=True)
        targets.append(os.path.join(args.results, f"cpu-{datetime.date.today().isoformat()}-sft-gold.json"))
    for path in targets:
        write_aside(path, json.dumps(out, indent=1))
    if args.results:
        lines = [f"# sft.py defaults against `{args.variant}` on the toy task's gold judge (cpu, "
                 f"{datetime.date.today().isoformat()})", "",
                 machine_line(out, args.note), "",
                 f"tests/test_sft.py's LoRA run ({args.steps} steps of 16 rows at 2e-3, LoRA on q/k/v/o), merged and "
                 f"judged on {SAMPLES} answers sampled at temperature 1 for each of {QUESTIONS} held-out questions. "
                 "Means over the seeds; the gain's range in brackets.", "", text, "", "Commands:", ""]
        lines += [f"    {cmd}" for cmd in commands.values()]
        stem = targets[-1].removesuffix(".json")
        write_aside(stem + ".md", "\n".join(lines) + "\n")
        say(f"wrote {stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
