#!/usr/bin/env python
"""Benchmark (not a test): our PPO engine (``ppo.py``) against TRL 1.12.0's ``trl.experimental.ppo.PPOTrainer``,
the last TRL release with PPO, on the same inputs and settings. Prints both sides' figures and the ratios.

    python bench/ppo_vs_trl.py --setting small|100m [--steps N] [--device cpu|cuda] [--out DIR]

One command, one process tree, one side after the other:

1. a separate virtualenv ``.bench/trl-1.12`` (created when missing): torch 2.13.0 (the CPU build, or the CUDA
   build with ``--device cuda``), ``trl==1.12.0`` and the transformers / accelerate / peft / datasets versions of
   the project's own environment (trl 1.12.0 accepts transformers >= 4.56.2, 5.x included), so that both sides
   run the same model code and only the PPO engines differ;
2. the shared inputs, built once in ``<out>/inputs`` by ``bench/make_bench_inputs.py``: policy, reward
   model, prompts (and their token ids exactly as ``ppo.py`` makes them, for TRL);
3. ours: ``ppo.py`` with this interpreter; then TRL: ``bench/trl_ppo_runner.py`` with the bench venv's.
   Each runs under a small wrapper (this script in ``--measure-child`` mode) whose
   ``getrusage(RUSAGE_CHILDREN)`` then holds that run alone: peak RSS per run (of the largest process of the
   run's tree). On CUDA the peak is ``torch.cuda.max_memory_allocated`` written by each run.

Figures: episodes/s of the training loop (model loading excluded; ours: ``episodes_per_second`` from
``all_results.json``; TRL: episodes over the time of ``trainer.train()``), generated tokens/s (generation phase
only, tokens up to and including the first EOS), peak memory, reward gain (mean ``objective/scores`` of the last
3 steps minus the first step's) and the final ``objective/kl``. Written with the machine, the versions and the
exact commands to ``<out>/bench_results.json``.

Settings matched on both sides: policy, reward model, prompts (same token ids), episodes per PPO step,
mini-batches, PPO epochs, response length, temperature, learning rate and schedule, AdamW (eps, no weight
decay), KL coefficient and estimator, GAE and clipping constants, LoRA (r, alpha, all linear layers), stop at
EOS, no gradient clipping (TRL 1.12's PPO loop clips nothing), fp32, no gradient checkpointing, same number of
steps and optimizer steps. Prompts: ``ppo.py`` formats them itself (for a tokenizer without a chat template, the
toolkit's ``Question: ...\n\nAnswer:``) and TRL is given exactly those token ids. By design different: TRL's
value function is a separate model initialised from the reward model and trained in full; ours is a value head
on the policy trunk (``--value_model head``). Prompt order differs (each side shuffles with its own generator).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402 (bench/ is not a package: its programs import each other from their folder)
import machine  # noqa: E402
from common import REPO  # noqa: E402


def say(message: str) -> None:
    common.say(message, "ppo_vs_trl")


def run(cmd: list[str], what: str, env: dict | None = None) -> None:
    common.run(cmd, what, env=env, tag="ppo_vs_trl")

BENCH_DIR = os.path.join(REPO, ".bench")
DEFAULT_VENV = os.path.join(BENCH_DIR, "trl-1.12")
TORCH_VERSION = "2.13.0"
# trl 1.12.0 and the versions of the project's own .venv (requirements.txt lower bounds), so both sides share
# the model code; trl 1.12.0 requires transformers>=4.56.2, accelerate>=1.4.0, datasets>=4.7.0, peft>=0.8.0
TRL_PINS = ["trl==1.12.0", "transformers==5.23.0", "accelerate==1.15.0", "peft==0.21.2", "datasets==5.2.0"]

SETTINGS = {
    "small": {"steps": 20, "batch_size": 32, "num_mini_batches": 2, "ppo_epochs": 2, "response_length": 32,
              "learning_rate": 3e-4},
    "100m": {"steps": 3, "batch_size": 8, "num_mini_batches": 2, "ppo_epochs": 2, "response_length": 32,
             "learning_rate": 3e-4},
}
FIXED = {"temperature": 0.7, "kl_coef": 0.05, "kl_estimator": "k1", "lr_scheduler_type": "constant",
         "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "gamma": 1.0, "lam": 0.95, "cliprange": 0.2,
         "cliprange_value": 0.2, "vf_coef": 0.1, "seed": 42}


# -------------------------------------------------------------------------------------------- the TRL venv
def ensure_trl_venv(venv: str, device: str) -> str:
    """Create or update ``venv`` with torch (CPU or CUDA build) and TRL 1.12.0; returns its python."""
    python = os.path.join(venv, "bin", "python")
    torch_spec = f"torch=={TORCH_VERSION}+cpu" if device == "cpu" else f"torch=={TORCH_VERSION}"
    wanted = {"torch": torch_spec, "pins": TRL_PINS}
    stamp = os.path.join(venv, ".bench-ready.json")
    if os.path.isfile(python) and os.path.isfile(stamp):
        with open(stamp, encoding="utf-8") as handle:
            if json.load(handle) == wanted:
                say(f"TRL venv {venv} is ready ({torch_spec}, {' '.join(TRL_PINS)})")
                return python
    if os.path.isfile(python) and not os.path.isfile(stamp):  # made by hand (bench/cuda_checks.sh: the GPU
        # machine's own torch, no registry there): used as it is when it holds TRL 1.12.0
        found = subprocess.run([python, "-c", "import torch, trl; print(trl.__version__, torch.__version__)"],
                               capture_output=True, text=True)
        if found.returncode == 0 and found.stdout.split()[:1] == ["1.12.0"]:
            say(f"TRL venv {venv}: trl 1.12.0 with torch {found.stdout.split()[1]}, made beforehand: used as it is")
            return python
    if not os.path.isfile(python):
        run([sys.executable, "-m", "venv", venv], "create the TRL venv")
    pip = [python, "-m", "pip", "install", "--quiet"]
    env = dict(os.environ)
    if device == "cuda":
        # the registry's default (CUDA) build: keep a local find-links folder holding the +cpu wheel out of it
        env.pop("PIP_FIND_LINKS", None)
        env["PIP_CONFIG_FILE"] = os.devnull
    try:
        run([*pip, torch_spec], f"install {torch_spec}", env=env)
    except SystemExit:
        hint = ("the CPU build comes from pip's configuration (e.g. a find-links folder holding "
                f"torch-{TORCH_VERSION}+cpu) or an index given with PIP_EXTRA_INDEX_URL")
        raise SystemExit(f"error: could not install {torch_spec}; {hint}") from None
    constraints = os.path.join(venv, "bench-constraints.txt")
    with open(constraints, "w", encoding="utf-8") as handle:
        handle.write(torch_spec + "\n")  # nothing below may replace this torch (no CUDA build pulled by a dep)
    run([*pip, "-c", constraints, *TRL_PINS], "install TRL 1.12.0")
    run([python, "-c", "from trl.experimental.ppo import PPOConfig, PPOTrainer"], "check TRL's PPOTrainer imports")
    with open(stamp, "w", encoding="utf-8") as handle:
        json.dump(wanted, handle)
    return python


# --------------------------------------------------------------------------------------------- the two runs
def ours_command(manifest: dict, s: dict, out_dir: str, device: str) -> list[str]:
    return [
        sys.executable, "ppo.py",
        "--model_name_or_path", manifest["policy"],
        "--reward_model_name", manifest["reward_model"],
        "--dataset_name", manifest["prompts"],
        "--output_dir", out_dir,
        "--batch_size", str(s["batch_size"]),
        "--mini_batch_size", str(s["batch_size"] // s["num_mini_batches"]),
        "--gradient_accumulation_steps", "1",
        "--ppo_epochs", str(s["ppo_epochs"]),
        "--steps", str(s["steps"]),
        "--output_max_length", str(s["response_length"]),
        "--learning_rate", str(s["learning_rate"]),
        "--lr_scheduler_type", s["lr_scheduler_type"],
        "--max_grad_norm", "0",
        "--kl_coef", str(s["kl_coef"]),
        "--kl_estimator", s["kl_estimator"],
        "--temperature", str(s["temperature"]),
        "--top_k", "0", "--top_p", "1.0",
        "--stop_token", "eos",
        *(["--missing_eos_penalty", str(s["missing_eos_penalty"])] if s["missing_eos_penalty"] is not None else []),
        "--gamma", str(s["gamma"]), "--lam", str(s["lam"]),
        "--cliprange", str(s["cliprange"]), "--cliprange_value", str(s["cliprange_value"]),
        "--vf_coef", str(s["vf_coef"]),
        "--use_peft", "True", "--lora_r", str(s["lora_r"]), "--lora_alpha", str(s["lora_alpha"]),
        "--lora_dropout", str(s["lora_dropout"]),
        "--value_model", s.get("value_model", "head"),
        "--seed", str(s["seed"]),
        "--report_to", "none", "--sample_every", "0", "--save_merged", "False",
        "--device", device,
    ]


def trl_spec(manifest: dict, s: dict, out_dir: str, device: str) -> dict:
    keys = ("batch_size", "num_mini_batches", "ppo_epochs", "steps", "response_length", "learning_rate",
            "lr_scheduler_type", "kl_coef", "kl_estimator", "temperature", "missing_eos_penalty", "seed", "lora_r",
            "lora_alpha", "lora_dropout", "gamma", "lam", "cliprange", "cliprange_value", "vf_coef")
    return {"policy": manifest["policy"], "reward_model": manifest["reward_model"],
            "value_model": manifest["reward_model"], "prompts_tokenized": manifest["prompts_tokenized"],
            "output_dir": out_dir, "result": os.path.join(out_dir, "trl_results.json"), "device": device,
            "lora_target_modules": "all-linear", "adam_epsilon": 1e-5, "optim": "adamw_torch",
            **{k: s[k] for k in keys}}


def child_env(threads: int) -> dict:
    """The environment of both runs: ``threads`` > 0 pins torch's intra-op threads (OpenMP/MKL) on both sides."""
    env = dict(os.environ)
    if threads > 0:
        env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
    return env


def tail_gain(scores: list[float]) -> float | None:
    if not scores:
        return None
    tail = scores[-3:]
    return sum(tail) / len(tail) - scores[0]


def ours_figures(out_dir: str, process: dict, cuda_peak: dict | None, s: dict) -> dict:
    with open(os.path.join(out_dir, "all_results.json"), encoding="utf-8") as handle:
        summary = json.load(handle)
    with open(os.path.join(out_dir, "trainer_state.json"), encoding="utf-8") as handle:
        history = json.load(handle)["log_history"]
    log = open(process["log"], encoding="utf-8", errors="replace").read()
    found = re.search(r"([\d,]+) trainable of ([\d,]+) parameters", log)
    lengths = [h["val/mean_length"] for h in history]
    return {
        "episodes_per_second": summary["episodes_per_second"],
        "train_seconds": summary["train_runtime"],
        "episodes": summary["train_episodes"],
        "generated_tokens_per_second": summary.get("generated_tokens_per_second"),
        "mean_response_tokens": sum(lengths) / len(lengths) if lengths else None,
        "eos_share": sum(h["val/num_eos_tokens"] for h in history) / max(1, summary["train_episodes"]),
        "cuda_max_memory_allocated": (cuda_peak or {}).get("cuda_max_memory_allocated"),
        "time_shares": {k.split("/", 1)[1]: v for k, v in summary.items() if k.startswith("time_share/")},
        **_shared_figures(process, history),
        "optimizer_steps": s["steps"] * s["ppo_epochs"] * s["num_mini_batches"],
        "trainable_parameters": int(found.group(1).replace(",", "")) if found else None,
        "value_function": {"head": "value head on the policy trunk",
                           "reward": "critic initialised from the reward model (LoRA)"}[s.get("value_model", "head")],
        "reference": "LoRA adapter disabled",
    }


def _shared_figures(process: dict, history: list[dict]) -> dict:
    """The figures both sides report the same way: process resources, scores and KL per step."""
    scores = [h["objective/scores"] for h in history]
    return {
        "peak_rss_bytes": process["max_rss_bytes"],
        "process_wall_seconds": process["wall_seconds"],
        "cpu_seconds": process["user_seconds"] + process["system_seconds"],
        "load_average_1min_before_after": [process["load_average_before"][0], process["load_average_after"][0]],
        "first_score": scores[0] if scores else None,
        "last3_score": sum(scores[-3:]) / len(scores[-3:]) if scores else None,
        "reward_gain": tail_gain(scores),
        "final_kl": history[-1]["objective/kl"] if history else None,
        "scores": scores,
        "kl": [h["objective/kl"] for h in history],
    }


def trl_figures(out_dir: str, process: dict) -> dict:
    with open(os.path.join(out_dir, "trl_results.json"), encoding="utf-8") as handle:
        result = json.load(handle)
    history = result["log_history"]
    episodes = result["episodes"]
    return {
        "episodes_per_second": result["episodes_per_second"],
        "train_seconds": result["train_seconds"],
        "episodes": episodes,
        "generated_tokens_per_second": result["generated_tokens_per_second"],
        "mean_response_tokens": result["generated_tokens"] / max(1, episodes),
        "eos_share": result["episodes_with_eos"] / max(1, episodes),
        "cuda_max_memory_allocated": result.get("cuda_max_memory_allocated"),
        **_shared_figures(process, history),
        "optimizer_steps": result["optimizer_steps"],
        "trainable_parameters": result["trainable_parameters"],
        "value_function": "separate value model (from the reward model), trained in full",
        "reference": result["reference_model"],
        "batch_arithmetic": result["batch_arithmetic"],
        "generation_widths": result["generation_widths"],
    }


# --------------------------------------------------------------------------------------------- reporting
def fmt(value, kind: str) -> str:
    """A figure of the side-by-side table, in bench/report.py's format (``kind``: mib, int, ratio, signed, num)."""
    from report import number  # bench/ is the script's folder: on sys.path when run, and in tests/test_bench.py

    return number(value, {"mib": "MiB", "ratio": "x", "num": ""}.get(kind, kind))


def ratio(a, b):
    return a / b if a is not None and b not in (None, 0) else None


def table(ours: dict, trl: dict, cuda: bool) -> tuple[str, dict]:
    memory_key = "cuda_max_memory_allocated" if cuda else "peak_rss_bytes"
    memory_name = "peak GPU memory (max_memory_allocated)" if cuda else "peak RSS (largest process of the run)"
    ratios = {
        "episodes_per_second": ratio(ours["episodes_per_second"], trl["episodes_per_second"]),
        "generated_tokens_per_second": ratio(ours["generated_tokens_per_second"], trl["generated_tokens_per_second"]),
        "peak_memory": ratio(ours[memory_key], trl[memory_key]),
    }
    rows = [
        ("episodes/s (training loop)", "episodes_per_second", "num", ratios["episodes_per_second"]),
        ("training loop seconds", "train_seconds", "num", ratio(ours["train_seconds"], trl["train_seconds"])),
        ("episodes", "episodes", "int", None),
        ("optimizer steps", "optimizer_steps", "int", None),
        ("generated tokens/s (generation)", "generated_tokens_per_second", "num",
         ratios["generated_tokens_per_second"]),
        ("mean response tokens", "mean_response_tokens", "num", None),
        ("share of episodes with EOS", "eos_share", "num", None),
        (memory_name, memory_key, "mib", ratios["peak_memory"]),
    ]
    if cuda:
        rows.append(("peak RSS (largest process of the run)", "peak_rss_bytes", "mib",
                     ratio(ours["peak_rss_bytes"], trl["peak_rss_bytes"])))
    rows += [
        ("process wall seconds (with loading)", "process_wall_seconds", "num",
         ratio(ours["process_wall_seconds"], trl["process_wall_seconds"])),
        ("process CPU seconds (user + system)", "cpu_seconds", "num", ratio(ours["cpu_seconds"], trl["cpu_seconds"])),
        ("trainable parameters", "trainable_parameters", "int", None),
        ("score, first step", "first_score", "signed", None),
        ("score, mean of last 3 steps", "last3_score", "signed", None),
        ("reward gain (last 3 - first)", "reward_gain", "signed", None),
        ("final KL (objective/kl)", "final_kl", "num", None),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [f"{'':{width}}  {'ours (ppo.py)':>16}  {'TRL 1.12.0':>16}  {'ours/TRL':>9}",
             "-" * (width + 47)]
    for label, key, kind, r in rows:
        lines.append(f"{label:{width}}  {fmt(ours.get(key), kind):>16}  {fmt(trl.get(key), kind):>16}  "
                     f"{fmt(r, 'ratio') if r is not None else '':>9}")
    return "\n".join(lines), ratios


# ----------------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", choices=sorted(SETTINGS), required=True)
    parser.add_argument("--steps", type=int, help="PPO steps (default: small 20, 100m 3)")
    parser.add_argument("--batch_size", type=int, help="episodes per PPO step (default: small 32, 100m 8)")
    parser.add_argument("--num_mini_batches", type=int, help="mini-batches per PPO epoch (default 2)")
    parser.add_argument("--ppo_epochs", type=int, help="PPO epochs per step (default 2)")
    parser.add_argument("--response_length", type=int, help="tokens generated at most (default 32)")
    parser.add_argument("--learning_rate", type=float, help="AdamW learning rate, constant (default 3e-4)")
    parser.add_argument("--lr_scheduler_type", choices=("constant", "linear"), default=FIXED["lr_scheduler_type"],
                        help="the two sides step a linear schedule differently (ours per optimizer step, TRL per "
                        "PPO step), hence constant by default")
    parser.add_argument("--missing_eos_penalty", type=float, default=None)
    parser.add_argument("--value_model", choices=("head", "reward"), default="head",
                        help="ours: a value head on the policy (default) or, as TRL, a critic from the reward model")
    parser.add_argument("--seed", type=int, default=FIXED["seed"], help="training seed, both sides")
    parser.add_argument("--num_prompts", type=int, default=256)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--out", help="output folder (default .bench/out-<setting>)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads of both runs (OMP_NUM_THREADS/MKL_NUM_THREADS; 0: torch's default, one "
                        "per core). On a machine shared with other work use 1: with more threads than free cores, "
                        "OpenMP's barriers make every op many times slower, and by an amount that varies by the minute")
    parser.add_argument("--venv", default=DEFAULT_VENV, help="the TRL virtualenv (default .bench/trl-1.12)")
    parser.add_argument("--skip", choices=("ours", "trl"), help="do not run this side; reuse its last results in --out")
    parser.add_argument("--ours_args", default="", help="more ppo.py flags for our side (e.g. "
                        "'--merge_adapter_for_generation off' to measure a default's effect)")
    args = parser.parse_args(argv)
    settings = {**FIXED, **SETTINGS[args.setting], "lr_scheduler_type": args.lr_scheduler_type,
                "missing_eos_penalty": args.missing_eos_penalty, "seed": args.seed, "value_model": args.value_model}
    for key in ("steps", "batch_size", "num_mini_batches", "ppo_epochs", "response_length", "learning_rate"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    if settings["batch_size"] % settings["num_mini_batches"]:
        parser.error("--batch_size must be a multiple of --num_mini_batches")
    args.out = os.path.abspath(args.out or os.path.join(BENCH_DIR, f"out-{args.setting}"))
    if args.skip and not os.path.isfile(os.path.join(args.out, f"{args.skip}.log.process.json")):
        parser.error(f"--skip {args.skip} reuses that side's last run in --out, and {args.out} has none: run once "
                     "without --skip (or point --out at an earlier run)")
    return args, settings


def run_side(args, cmd: list[str], side: str, label: str, env) -> dict:
    """One side's process figures: ``cmd`` run under the measuring wrapper into ``<out>/<side>``, or with
    ``--skip SIDE`` the figures of its last run."""
    if args.skip == side:
        say(f"{label}: skipped, reusing the last results")
        log = os.path.join(args.out, f"{side}.log")
        with open(log + ".process.json", encoding="utf-8") as handle:
            return {**json.load(handle), "log": log}
    shutil.rmtree(os.path.join(args.out, side), ignore_errors=True)
    return common.measured(cmd, label, os.path.join(args.out, f"{side}.log"), env, tag="ppo_vs_trl")


def main(argv: list[str] | None = None) -> int:
    args, s = parse_args(argv)
    cuda = args.device == "cuda"
    os.makedirs(args.out, exist_ok=True)
    env = child_env(args.threads)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if not cuda and args.threads == 0 and os.getloadavg()[0] > 0.5 * cores:
        say(f"warning: load average {os.getloadavg()[0]:.1f} on {cores} cores: other work is running; timings with "
            "torch's default threads will be noisy and distorted, consider --threads 1")
    commands: dict[str, str] = {"benchmark": shlex.join([sys.executable, *sys.argv])}
    say(f"setting {args.setting}: {json.dumps(s)}; output in {args.out}")

    trl_python = ensure_trl_venv(os.path.abspath(args.venv), args.device) if args.skip != "trl" else None

    inputs_cmd = [sys.executable, "bench/make_bench_inputs.py", "--setting", args.setting, "--out", args.out,
                  "--num_prompts", str(args.num_prompts)]
    run(inputs_cmd, "inputs")
    commands["inputs"] = shlex.join(inputs_cmd)
    with open(os.path.join(args.out, "inputs", "inputs.json"), encoding="utf-8") as handle:
        manifest = json.load(handle)

    ours_dir, trl_dir = os.path.join(args.out, "ours"), os.path.join(args.out, "trl")
    cmd = [*ours_command(manifest, s, ours_dir, args.device), *shlex.split(args.ours_args)]
    cuda_peak_path = os.path.join(args.out, "ours_cuda_peak.json")
    if cuda:  # ppo.py does not write GPU memory: run it inside a shim that does
        cmd = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "common.py"), "--cuda-peak",
               cuda_peak_path, "--", *cmd[1:]]
    commands["ours"] = shlex.join(cmd)
    process = run_side(args, cmd, "ours", "ours (ppo.py)", env)
    cuda_peak = None
    if cuda and os.path.isfile(cuda_peak_path):
        with open(cuda_peak_path, encoding="utf-8") as handle:
            cuda_peak = json.load(handle)
    ours = ours_figures(ours_dir, process, cuda_peak, s)

    spec_path = os.path.join(args.out, "trl_spec.json")
    with open(spec_path, "w", encoding="utf-8") as handle:
        json.dump(trl_spec(manifest, s, trl_dir, args.device), handle, indent=1)
    python = trl_python or os.path.join(os.path.abspath(args.venv), "bin", "python")
    cmd = [python, "bench/trl_ppo_runner.py", "--spec", spec_path]
    commands["trl"] = shlex.join(cmd)
    process = run_side(args, cmd, "trl", "TRL 1.12.0 PPOTrainer", env)
    trl = trl_figures(trl_dir, process)
    commands["wrapper"] = (f"{shlex.quote(sys.executable)} bench/common.py --measure-child RESULT LOG -- "
                           "<the ours / trl command>")

    text, ratios = table(ours, trl, cuda)
    threads = f"{args.threads} thread(s)" if args.threads else "torch's default threads"
    title = (f"PPO benchmark, setting {args.setting} on {args.device} ({threads}): {s['steps']} steps x "
             f"{s['batch_size']} "
             f"episodes, {s['num_mini_batches']} mini-batches, {s['ppo_epochs']} PPO epochs, "
             f"response {s['response_length']} tokens, lr {s['learning_rate']} ({s['lr_scheduler_type']})")
    print("\n" + title + "\n" + text, flush=True)
    print(f"\nratios ours/TRL: episodes/s {fmt(ratios['episodes_per_second'], 'ratio')}, peak memory "
          f"{fmt(ratios['peak_memory'], 'ratio')}", flush=True)

    results = {
        "setting": args.setting,
        "device": args.device,
        "settings": s,
        "inputs": manifest,
        "ours": ours,
        "trl": trl,
        "ratios_ours_over_trl": ratios,
        "memory_measure": "torch.cuda.max_memory_allocated" if cuda else
        "peak RSS (ru_maxrss of RUSAGE_CHILDREN in a per-run wrapper: the largest process of the run's tree)",
        "machine": machine.describe(args.device),
        "threads": args.threads or "torch default",
        "environments": {"ours": machine.versions(sys.executable, env),
                         "trl": machine.versions(python, env) if os.path.isfile(python) else None},
        "commands": commands,
        "table": title + "\n" + text,
    }
    path = os.path.join(args.out, "bench_results.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=1)
    say(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
