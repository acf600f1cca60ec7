#!/usr/bin/env python
"""Benchmark (not a test): how much PPO *learns* per episode and per second, configurations side by side.

    python bench/ppo_learning.py [--episodes 512] [--config NAME='FLAGS' ...] [--out DIR]

The setting a user switching from TRL brings: ``stories260K`` (../shared/fixtures), 256 raw story prompts, a
reward model trained (reward_modeling.py) on pairs of the base model's own samples labelled by a rule, and the
rule itself as the held-out gold judge, which no model trained on: 1 when an answer holds a positive word
(``happy``, ``smiled``, ``fun``, ...), else 0. Every configuration gets the same user flags (episodes, batch 8,
one PPO epoch, 48-token responses, KL coefficient 0.05, ``--missing_eos_penalty 1.0``, raw prompts) and its own
on top; then compare_base_vs_ppo.py scores the base and the trained policy on 64 held-out prompts (4 answers
each, temperature 0.7): gold share, reward-model score, KL from the base. Printed and written to
``<out>/learning_results.json`` (with the machine and the exact commands): gold and reward after, their gain
over the base per 100 episodes and per minute of training, episodes/s, peak RSS.

Configurations default to the toolkit's defaults, and the same with ``--learning_rate 3e-5`` (what a TRL user
passes); ``--config name='--flag value ...'`` replaces the list (repeatable). The peer runs beside them: TRL 1.12's
PPOTrainer (bench/trl_ppo_runner.py, in the benchmark's own virtualenv) with *its* defaults (full fine-tuning, a
critic initialised from the reward model, learning rate 3e-6, one mini-batch, a linear schedule) and the same user
flags, once as is and once with ``--learning_rate 3e-5``; ``--trl name='--runner_flag value ...'`` replaces that
list, ``--no_trl`` skips it. Both engines score with the same reward model and are judged by the same command.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402 (bench/ is not a package: its programs import each other from their folder)
from common import REPO  # noqa: E402

STORIES = os.path.join(os.path.dirname(REPO), "shared", "fixtures", "models", "stories260K")
POSITIVE = ("happy", "smiled", "smile", "fun", "laughed", "love", "loved", "glad", "kind", "nice", "good", "great",
            "best", "beautiful", "proud", "excited")
RULE = f'''import re

POSITIVE = set({POSITIVE!r})


def gold(prompt, response):
    """1.0 when the answer holds a positive word, else 0.0."""
    return float(any(word in POSITIVE for word in re.findall(r"[a-z]+", response.lower())))
'''
USER_FLAGS = ["--batch_size", "8", "--mini_batch_size", "8", "--ppo_epochs", "1", "--output_max_length", "48",
              "--kl_coef", "0.05", "--missing_eos_penalty", "1.0", "--prompt_format", "raw", "--report_to", "none",
              "--sample_every", "0", "--logging_steps", "16"]
DEFAULT_CONFIGS = {"defaults": "", "defaults, --learning_rate 3e-5": "--learning_rate 3e-5"}
# the same user flags in TRL 1.12's names (bench/trl_ppo_runner.py); every other PPOConfig field keeps TRL's default
TRL_USER_FLAGS = ["--batch_size", "8", "--ppo_epochs", "1", "--response_length", "48", "--kl_coef", "0.05",
                  "--missing_eos_penalty", "1.0", "--use_peft", "0", "--trl_defaults", "1"]
DEFAULT_TRL = {"TRL 1.12, its defaults": "", "TRL 1.12, its defaults, --learning_rate 3e-5": "--learning_rate 3e-5"}


def say(message: str) -> None:
    common.say(message, "ppo_learning")


def run(cmd: list[str], log: str, env: dict | None = None) -> float:
    """Run ``cmd`` (output to ``log``); returns its wall time; stops with the log's end when it fails."""
    return common.run(cmd, os.path.basename(log).removesuffix(".log"), log=log, env=env, tag="ppo_learning")


def story_prompts(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    names = ("Lily", "Tom", "Ben", "Sue", "Max", "Mia", "Tim", "Anna", "Sam", "Lucy")
    places = ("the park", "the garden", "the house", "the beach", "the forest", "the shop", "school", "the lake")
    things = ("a red ball", "a big dog", "a little cat", "a toy car", "a blue bird", "a tall tree", "a box", "a frog")
    openings = ("Once upon a time, {n} went to {p} and saw {t}.", "One day, {n} found {t} in {p}.",
                "{n} and a friend played in {p}.", "{n} wanted {t}.", "At {p}, {n} met {t}.")
    return [rng.choice(openings).format(n=rng.choice(names), p=rng.choice(places), t=rng.choice(things))
            for _ in range(count)]


def write_jsonl(path: str, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)


def tokenize_prompts(prompts: list[str], path: str) -> None:
    """The training prompts as ppo.py --prompt_format raw encodes them, for TRL's runner, which takes token ids."""
    sys.path.insert(0, REPO)
    from rlhfkit import models, sampling

    _, ids = sampling.encode_prompts(models.load_tokenizer(STORIES), prompts, "raw")
    write_jsonl(path, [{"input_ids": row} for row in ids])


def build_inputs(out: str, seed: int, commands: dict) -> dict:
    """Prompts, the rule, rule-labelled pairs of the base model's samples, and the reward model trained on them."""
    inputs = os.path.join(out, "inputs")
    done = os.path.join(inputs, "DONE")
    paths = {"prompts": os.path.join(inputs, "prompts.jsonl"), "held_out": os.path.join(inputs, "held_out.jsonl"),
             "prompts_tokenized": os.path.join(inputs, "prompts_tokenized.jsonl"),
             "rule": os.path.join(inputs, "gold.py"), "pairs": os.path.join(inputs, "pairs.jsonl"),
             "reward_model": os.path.join(inputs, "reward_model")}
    if os.path.isfile(done):
        if not os.path.isfile(paths["prompts_tokenized"]):  # inputs built before the TRL rows existed
            with open(paths["prompts"], encoding="utf-8") as handle:
                tokenize_prompts([json.loads(line)["prompt"] for line in handle], paths["prompts_tokenized"])
        return paths
    os.makedirs(inputs, exist_ok=True)
    with open(paths["rule"], "w", encoding="utf-8") as handle:
        handle.write(RULE)
    prompts = story_prompts(256 + 64 + 512, seed)
    write_jsonl(paths["prompts"], [{"prompt": p} for p in prompts[:256]])
    write_jsonl(paths["held_out"], [{"prompt": p} for p in prompts[256:320]])
    # the base model's own answers to other prompts, 8 each, labelled by the rule: one pair per prompt that has a
    # positive and a negative answer
    sys.path.insert(0, REPO)
    import importlib.util

    import torch

    from rlhfkit import models, sampling

    spec = importlib.util.spec_from_file_location("gold_rule", paths["rule"])
    rule = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rule)
    tokenizer, model = models.load_tokenizer(STORIES), models.load_causal_lm(STORIES)
    tokenize_prompts(prompts[:256], paths["prompts_tokenized"])
    torch.manual_seed(seed)
    result = sampling.generate_text(model, tokenizer, prompts[320:], "raw", max_new_tokens=48, batch_size=64,
                                    do_sample=True, temperature=1.0, num_return_sequences=8)
    pairs = []
    for prompt, answers in zip(prompts[320:], result.completions, strict=True):
        good = [a for a in answers if rule.gold(prompt, a) > 0]
        bad = [a for a in answers if rule.gold(prompt, a) == 0]
        pairs += [{"prompt": prompt, "chosen": " " + g, "rejected": " " + b} for g, b in zip(good, bad, strict=False)]
    write_jsonl(paths["pairs"], pairs)
    say(f"{len(pairs)} rule-labelled pairs from the base model's samples")
    cmd = [sys.executable, "reward_modeling.py", "--model_name_or_path", STORIES, "--dataset_name", paths["pairs"],
           "--output_dir", paths["reward_model"], "--use_peft", "False", "--num_train_epochs", "3",
           "--per_device_train_batch_size", "16", "--learning_rate", "1e-3", "--eval_subset", "64",
           "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "True", "--overwrite_output_dir"]
    commands["reward_model"] = shlex.join(cmd)
    run(cmd, os.path.join(inputs, "reward_modeling.log"))
    with open(os.path.join(paths["reward_model"], "all_results.json"), encoding="utf-8") as handle:
        say(f"reward model held-out pair accuracy {json.load(handle)['eval_accuracy']:.3f}")
    open(done, "w").close()
    return paths


def folder_of(args, name: str) -> str:
    return os.path.join(args.out, "runs", "".join(c if c.isalnum() or c in ".-" else "_" for c in name))


def train_ours(name: str, flags: str, paths: dict, args, commands: dict) -> tuple[str, dict]:
    folder = folder_of(args, name)
    policy = os.path.join(folder, "policy")
    cmd = [sys.executable, "ppo.py", "--model_name_or_path", STORIES, "--reward_model_name", paths["reward_model"],
           "--dataset_name", paths["prompts"], "--output_dir", policy, "--overwrite_output_dir", "--total_episodes",
           str(args.episodes), "--seed", str(args.seed), *USER_FLAGS, *shlex.split(flags)]
    os.makedirs(folder, exist_ok=True)
    commands[name] = shlex.join(cmd)
    peak = run_for_peak(cmd, os.path.join(folder, "ppo.log"))
    with open(os.path.join(policy, "all_results.json"), encoding="utf-8") as handle:
        results = json.load(handle)
    return policy, {"engine": "ppo.py", "flags": flags, "value_model": results.get("value_model"),
                    "learning_rate": results.get("learning_rate"), "episodes": results["train_episodes"],
                    "train_runtime": results["train_runtime"], "episodes_per_second": results["episodes_per_second"],
                    "peak_rss_mib": peak}


def train_trl(name: str, flags: str, paths: dict, args, commands: dict, python: str) -> tuple[str, dict]:
    folder = folder_of(args, name)
    policy, result = os.path.join(folder, "policy"), os.path.join(folder, "trl_results.json")
    cmd = [python, "bench/trl_ppo_runner.py", "--policy", STORIES, "--reward_model", paths["reward_model"],
           "--prompts_tokenized", paths["prompts_tokenized"], "--output_dir", os.path.join(folder, "trainer"),
           "--result", result, "--save_model", policy, "--steps", str(args.episodes // 8), "--seed", str(args.seed),
           *TRL_USER_FLAGS, *shlex.split(flags)]
    os.makedirs(folder, exist_ok=True)
    commands[name] = shlex.join(cmd)
    peak = run_for_peak(cmd, os.path.join(folder, "trl.log"), env={**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1"})
    with open(result, encoding="utf-8") as handle:
        results = json.load(handle)
    return policy, {"engine": f"TRL {results['versions']['trl']}", "flags": flags,
                    "value_model": "reward model (trained copy)", "learning_rate": results["config"]["learning_rate"],
                    "episodes": results["episodes"], "train_runtime": results["train_seconds"],
                    "episodes_per_second": results["episodes_per_second"], "peak_rss_mib": peak}


def run_for_peak(cmd: list[str], log: str, env: dict | None = None) -> float:
    """Run ``cmd`` under the measuring wrapper (bench/common.py); returns the peak RSS (MiB) of its process tree,
    this run's only."""
    figures = common.measured(cmd, os.path.basename(log).removesuffix(".log"), log, env, echo=False,
                              tag="ppo_learning")
    return figures["max_rss_bytes"] / 2**20


def score(name: str, policy: str, figures: dict, paths: dict, args) -> dict:
    """compare_base_vs_ppo.py on the held-out prompts: gold, reward and KL of the base and the trained policy."""
    folder = folder_of(args, name)
    compare = [sys.executable, "compare_base_vs_ppo.py", "--base_model", STORIES, "--finetuned_model", policy,
               "--tokenizer_name_or_path", STORIES, "--reward_model", paths["reward_model"], "--dataset_name",
               paths["held_out"], "--num_samples", "64", "--generations_per_prompt", "4", "--max_new_tokens", "48",
               "--prompt_format", "raw", "--gold_judge", f"{paths['rule']}:gold", "--output_dir",
               os.path.join(folder, "comparison")]
    run(compare, os.path.join(folder, "compare.log"))
    with open(os.path.join(folder, "comparison", "comparison.json"), encoding="utf-8") as handle:
        summary = json.load(handle)["models"]
    base, tuned = summary["base"], summary["finetuned"]
    episodes, minutes = figures["episodes"], figures["train_runtime"] / 60
    gold_gain, reward_gain = tuned["gold"]["mean"] - base["gold"]["mean"], tuned["reward"]["mean"] - base["reward"]["mean"]
    return {**figures, "gold_before": base["gold"]["mean"], "gold_after": tuned["gold"]["mean"],
            "reward_before": base["reward"]["mean"], "reward_after": tuned["reward"]["mean"],
            "kl_from_base": (tuned["kl_from_base"] or {}).get("mean"),
            "gold_gain_per_100_episodes": 100 * gold_gain / episodes, "gold_gain_per_minute": gold_gain / minutes,
            "reward_gain_per_100_episodes": 100 * reward_gain / episodes, "reward_gain_per_minute": reward_gain / minutes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", action="append", metavar="NAME=FLAGS", help="a configuration (repeatable)")
    parser.add_argument("--trl", action="append", metavar="NAME=FLAGS",
                        help="a TRL 1.12 configuration: bench/trl_ppo_runner.py flags (repeatable)")
    parser.add_argument("--no_trl", action="store_true", help="run no TRL configuration")
    parser.add_argument("--venv", help="the TRL virtualenv (default .bench/trl-1.12, created when absent)")
    parser.add_argument("--out", default=os.path.join(REPO, ".bench", "ppo-learning"))
    args = parser.parse_args(argv)
    if not os.path.isdir(STORIES):
        sys.exit(f"error: {STORIES} is absent: this benchmark runs on the project's shared fixtures")
    configs = dict(c.split("=", 1) for c in args.config) if args.config else DEFAULT_CONFIGS
    peers = {} if args.no_trl else dict(c.split("=", 1) for c in args.trl) if args.trl else DEFAULT_TRL
    import machine
    from ppo_vs_trl import DEFAULT_VENV, ensure_trl_venv
    from report import learning_table

    python = ensure_trl_venv(args.venv or DEFAULT_VENV, "cpu") if peers else None

    commands = {"benchmark": shlex.join(["python", "bench/ppo_learning.py", *(argv or sys.argv[1:])])}
    started = time.perf_counter()
    paths = build_inputs(args.out, args.seed, commands)
    rows = {}
    todo = [(name, flags, False) for name, flags in configs.items()] + [(n, f, True) for n, f in peers.items()]
    for i, (name, flags, peer) in enumerate(todo):
        say(f"[{i + 1}/{len(todo)}] {name}: {flags or '(no flags of its own)'}")
        if peer:
            policy, figures = train_trl(name, flags, paths, args, commands, python)
        else:
            policy, figures = train_ours(name, flags, paths, args, commands)
        rows[name] = r = score(name, policy, figures, paths, args)
        say(f"  gold {r['gold_before']:.2f} -> {r['gold_after']:.2f}, reward {r['reward_before']:.2f} -> "
            f"{r['reward_after']:.2f}, {r['episodes_per_second']:.1f} episodes/s; "
            f"{(time.perf_counter() - started) / 60:.1f} min so far")
    text = learning_table(rows)
    print("\n" + text, flush=True)
    out = {"machine": machine.describe("cpu"), "versions": machine.versions(), "episodes": args.episodes,
           "user_flags": shlex.join(USER_FLAGS), "trl_user_flags": shlex.join(TRL_USER_FLAGS), "results": rows, "commands": commands,
           "total_seconds": time.perf_counter() - started}
    path = os.path.join(args.out, "learning_results.json")
    common.write_aside(path, json.dumps(out, indent=1))
    say(f"wrote {path} in {out['total_seconds'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
