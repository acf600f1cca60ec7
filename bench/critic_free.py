#!/usr/bin/env python
"""Benchmark (not a test): our PPO against GRPO and RLOO on the toy task, with the same number of generated episodes.

    python bench/critic_free.py [--episodes 960] [--seeds 42 1 2] [--engines ppo,grpo,rloo] [--out DIR]
                                [--results bench/results] [--note TEXT]

The toy pipeline's setting (ppo_pipeline_sanity.sh's toy profile): the embedded base model, SFT with LoRA (300
steps) merged, a reward model trained in full on the toy pairs. From the merged SFT model each engine trains
against that reward model with its own defaults and the toy task's lengths (48-token answers):

* ``ppo.py``: the pipeline's PPO (batches of 32 episodes, mini-batches of 8, ``--kl_coef 0.2``; LoRA at 3e-4, the
  critic from the reward model);
* ``grpo.py``: its defaults (TRL's batch: one prompt x 8 completions per step, loss ``dapo``; ``--beta 0.04``,
  LoRA at 3e-4);
* ``rloo.py``: its defaults (TRL's RLOO: 4 prompts x 2 completions per step, ``--beta 0.05``; LoRA at 3e-4).

Each engine trains once per seed in ``--seeds`` (the SFT model and the reward model are built once, with the
first). Each trained policy is merged and judged by compare_base_vs_ppo.py on 200 held-out prompts x 2 answers (the
pipeline's comparison): the reward model's score, the gold judge no model saw, the KL from the base. Printed side by
side, the mean over seeds with the range (gain over the SFT model per 100 episodes and per minute of training,
episodes/s, peak RSS), and written to ``<out>/critic_free_results.json``; with ``--results DIR`` also
``DIR/<device>-<date>-critic-free.{json,md}``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402 (bench/ is not a package: its programs import each other from their folder)
from common import REPO, machine_line, write_aside  # noqa: E402

PY = sys.executable
QUIET = ["--save_strategy", "no", "--disable_tqdm", "True", "--report_to", "none", "--bf16", "False"]
SFT_ARGS = ["--max_steps", "300", "--per_device_train_batch_size", "16", "--learning_rate", "2e-3",
            "--lora_target_modules", "q_proj", "k_proj", "v_proj", "o_proj", *QUIET]
RM_ARGS = ["--use_peft", "False", "--per_device_train_batch_size", "32", "--num_train_epochs", "2",
           "--learning_rate", "1e-3", "--max_length", "128", *QUIET]
COMPARE_ARGS = ["--num_samples", "200", "--generations_per_prompt", "2", "--max_new_tokens", "48"]
ENGINES = ("ppo", "grpo", "rloo")
EPISODES_PER_STEP = {"ppo": 32, "grpo": 8, "rloo": 8}  # each engine's batch with the flags below


def say(message: str) -> None:
    common.say(message, "critic_free")


def run(cmd: list[str], log: str) -> float:
    return common.run(cmd, os.path.basename(log).removesuffix(".log"), log=log, tag="critic_free")


def variant_flags(name: str, args) -> tuple[str, list[str]]:
    """The script an engine row runs and its extra flags: ``grpo+`` is grpo.py with ``--grpo_args``."""
    return ("grpo", shlex.split(args.grpo_args)) if name == "grpo+" else (name, [])


def engine_command(engine: str, sft: str, rm: str, out: str, episodes: int, seed: int,
                   extra: list[str] = ()) -> list[str]:
    # --num_iterations N (TRL's GRPO and RLOO) trains N optimizer steps on each generated batch: N times the steps
    # for the same episodes
    passes = int(extra[extra.index("--num_iterations") + 1]) if "--num_iterations" in extra else 1
    steps = str(episodes // EPISODES_PER_STEP[engine] * passes)
    if engine == "ppo":
        return [PY, "ppo.py", "--model_name_or_path", sft, "--reward_model_name", rm, "--output_dir", out,
                "--steps", steps, "--batch_size", "32", "--mini_batch_size", "8", "--kl_coef", "0.2",
                "--output_max_length", "48", "--sample_every", "0", "--report_to", "none", "--seed", str(seed)]
    return [PY, f"{engine}.py", "--model_name_or_path", sft, "--reward_model_name", rm, "--output_dir", out,
            "--max_steps", steps, "--max_completion_length", "48", "--logging_steps", "10", "--seed", str(seed),
            *QUIET, *extra]


def build_inputs(work: str, seed: int, commands: dict) -> dict:
    """The embedded default, the merged SFT model and the reward model (built once per work folder)."""
    os.makedirs(work, exist_ok=True)
    paths = {"sft": os.path.join(work, "sft"), "sft_merged": os.path.join(work, "sft_merged"),
             "rm": os.path.join(work, "rm")}
    embedded = json.loads(subprocess.run([PY, "-m", "rlhfkit.embedded"], cwd=REPO, capture_output=True, text=True,
                                         check=True).stdout)
    paths.update(base=embedded["model"], data=embedded["dataset"])
    steps = {
        "sft": [PY, "sft.py", "--output_dir", paths["sft"], "--seed", str(seed), *SFT_ARGS],
        "merge_sft": [PY, "merge_peft_adapter.py", "--adapter_model_name", paths["sft"], "--output_name",
                      paths["sft_merged"]],
        "reward_model": [PY, "reward_modeling.py", "--model_name_or_path", paths["sft_merged"], "--output_dir",
                         paths["rm"], "--seed", str(seed), *RM_ARGS],
    }
    for name, cmd in steps.items():
        commands[name] = shlex.join(cmd)
        done = os.path.join(work, f".{name}.done")
        if not os.path.exists(done):
            run(cmd, os.path.join(work, f"{name}.log"))
            open(done, "w").close()
    return paths


def train_and_judge(name: str, seed: int, paths: dict, args, commands: dict) -> dict:
    engine, extra = variant_flags(name, args)
    folder = os.path.join(args.out, f"{name.replace('+', '-args')}-seed{seed}")
    policy, merged = os.path.join(folder, "policy"), os.path.join(folder, "merged")
    os.makedirs(folder, exist_ok=True)
    cmd = engine_command(engine, paths["sft_merged"], paths["rm"], policy, args.episodes, seed, extra)
    commands[f"{name} seed {seed}"] = shlex.join(cmd)
    figures = common.measured([*cmd, "--overwrite_output_dir", "True"], engine, os.path.join(folder, "train.log"),
                              echo=False, tag="critic_free")
    with open(os.path.join(policy, "all_results.json"), encoding="utf-8") as handle:
        results = json.load(handle)
    judged = policy
    if engine != "ppo":  # ppo.py saves the merged policy itself; the Trainer scripts save the LoRA adapter
        merge = [PY, "merge_peft_adapter.py", "--base_model_name", paths["sft_merged"], "--adapter_model_name", policy,
                 "--output_name", merged, "--overwrite_output_dir", "True"]
        run(merge, os.path.join(folder, "merge.log"))
        judged = merged
    compare = [PY, "compare_base_vs_ppo.py", "--base_model", paths["base"], "--sft_model", paths["sft_merged"],
               "--finetuned_model", judged, "--reward_model", paths["rm"], "--dataset_name", paths["data"],
               "--output_dir", os.path.join(folder, "comparison"), *COMPARE_ARGS]
    shutil.rmtree(os.path.join(folder, "comparison"), ignore_errors=True)  # a rerun judges afresh
    commands[f"{name} seed {seed} comparison"] = shlex.join(compare)
    run(compare, os.path.join(folder, "compare.log"))
    with open(os.path.join(folder, "comparison", "comparison.json"), encoding="utf-8") as handle:
        models = json.load(handle)["models"]
    sft, tuned = models["sft"], models["finetuned"]
    runtime = results["train_runtime"]
    episodes = results["train_episodes"]
    gold_gain = tuned["gold"]["mean"] - sft["gold"]["mean"]
    reward_gain = tuned["reward"]["mean"] - sft["reward"]["mean"]
    return {"episodes": episodes, "train_runtime": runtime, "episodes_per_second": episodes / runtime,
            "wall_seconds": figures["wall_seconds"], "peak_rss_mib": figures["max_rss_bytes"] / 2**20,
            "base_gold": models["base"]["gold"]["mean"], "sft_gold": sft["gold"]["mean"], "gold": tuned["gold"]["mean"],
            "sft_reward": sft["reward"]["mean"], "reward": tuned["reward"]["mean"],
            "kl_from_base": (tuned.get("kl_from_base") or {}).get("mean"),
            "gold_gain": gold_gain, "reward_gain": reward_gain,
            "gold_gain_per_100_episodes": 100 * gold_gain / episodes, "gold_gain_per_minute": 60 * gold_gain / runtime,
            "reward_gain_per_100_episodes": 100 * reward_gain / episodes,
            "reward_gain_per_minute": 60 * reward_gain / runtime}


def summary(runs: list[dict]) -> dict:
    """Each figure's mean over the seeds' runs, and its range."""
    keys = [k for k, v in runs[0].items() if isinstance(v, int | float) and v is not None]
    out = {}
    for key in keys:
        values = [r[key] for r in runs if r.get(key) is not None]
        out[key] = {"mean": sum(values) / len(values), "min": min(values), "max": max(values)}
    return out


def table(rows: dict) -> str:
    """One line per engine: means over the seeds, the range of the gains in brackets."""
    lines = ["| engine | seeds | episodes | train time | episodes/s | gold SFT -> after | gold gain | reward SFT -> after "
             "| KL from base | gold gain /100 ep | gold gain /min | reward gain /100 ep | reward gain /min | peak RSS |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, block in rows.items():
        m = {k: v["mean"] for k, v in block["summary"].items()}
        rng = block["summary"]
        kl = "n/a" if "kl_from_base" not in m else f"{m['kl_from_base']:.2f}"
        lines.append(f"| {name} | {len(block['runs'])} | {m['episodes']:.0f} | {m['train_runtime']:.0f} s | "
                     f"{m['episodes_per_second']:.1f} | {m['sft_gold']:+.3f} -> {m['gold']:+.3f} | "
                     f"{m['gold_gain']:+.3f} ({rng['gold_gain']['min']:+.3f} to {rng['gold_gain']['max']:+.3f}) | "
                     f"{m['sft_reward']:+.2f} -> {m['reward']:+.2f} | {kl} | {m['gold_gain_per_100_episodes']:+.3f} | "
                     f"{m['gold_gain_per_minute']:+.3f} | {m['reward_gain_per_100_episodes']:+.3f} | "
                     f"{m['reward_gain_per_minute']:+.3f} | {m['peak_rss_mib']:,.0f} MiB |")
    return "\n".join(lines)


def write_report(out: dict, folder: str, text: str) -> None:
    """``<folder>/cpu-<date>-critic-free[-grpo-args].{json,md}``, each written aside and renamed."""
    os.makedirs(folder, exist_ok=True)
    today = datetime.date.today().isoformat()
    stem = os.path.join(folder, f"cpu-{today}-critic-free" + ("-grpo-args" if out.get("grpo_args") else ""))
    engines = ", ".join(f"`{name}`" for name in out["results"])
    lines = [f"# {engines} on the toy task, {out['episodes']} episodes each (cpu, {today})", "",
             machine_line(out, out["note"]), "",
             "Gains are over the merged SFT model every engine starts from, on 200 held-out prompts x 2 answers "
             "(compare_base_vs_ppo.py); the gold judge is the toy task's rule, which no model saw. Means over "
             f"training seeds {', '.join(map(str, out['seeds']))}; the gold gain's range in brackets.", "", text, "",
             "Commands:", ""] + [f"    {cmd}" for cmd in out["commands"].values()]
    write_aside(stem + ".json", json.dumps(out, indent=1))
    write_aside(stem + ".md", "\n".join(lines) + "\n")
    say(f"wrote {stem}.json and .md")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=960, help="generated episodes per engine (a multiple of 32)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2],
                        help="training seeds (each engine trains once per seed; the inputs use the first)")
    parser.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated, of {', '.join(ENGINES)}")
    parser.add_argument("--out", default=os.path.join(REPO, ".bench", "critic-free"))
    parser.add_argument("--results", help="also write <device>-<date>-critic-free.{json,md} into this folder")
    parser.add_argument("--grpo_args", help="one more row: grpo.py with these flags too (e.g. '--num_iterations 2'; "
                        "the steps grow with --num_iterations so the episodes stay the same)")
    parser.add_argument("--note", default="", help="a line for the report (e.g. what else ran on the machine)")
    args = parser.parse_args(argv)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if not engines or any(e not in ENGINES for e in engines):
        parser.error(f"--engines: choose from {', '.join(ENGINES)}")
    if args.grpo_args:
        engines.append("grpo+")
    if args.episodes % 32:
        parser.error("--episodes must be a multiple of 32 (PPO's batch)")
    import machine

    commands = {"benchmark": shlex.join(["python", "bench/critic_free.py", *(argv if argv is not None else sys.argv[1:])])}
    started = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    paths = build_inputs(os.path.join(args.out, "inputs"), args.seeds[0], commands)
    rows = {engine: {"runs": []} for engine in engines}
    todo = [(seed, engine) for seed in args.seeds for engine in engines]  # seed by seed: drift hits every engine
    for i, (seed, engine) in enumerate(todo):
        say(f"[{i + 1}/{len(todo)}] {engine}, seed {seed}: {args.episodes} episodes")
        r = train_and_judge(engine, seed, paths, args, commands)
        rows[engine]["runs"].append({"seed": seed, **r})
        say(f"  gold {r['sft_gold']:+.3f} -> {r['gold']:+.3f}, reward {r['sft_reward']:+.2f} -> {r['reward']:+.2f}, "
            f"{r['episodes_per_second']:.1f} episodes/s; {(time.perf_counter() - started) / 60:.1f} min so far")
    rows = {(f"grpo {args.grpo_args}" if name == "grpo+" else name): block for name, block in rows.items()}
    for block in rows.values():
        block["summary"] = summary(block["runs"])
    text = table(rows)
    print("\n" + text, flush=True)
    out = {"machine": machine.describe("cpu"), "versions": machine.versions(), "episodes": args.episodes,
           "seeds": args.seeds, "note": args.note, "grpo_args": args.grpo_args, "results": rows, "commands": commands,
           "total_seconds": time.perf_counter() - started}
    path = os.path.join(args.out, "critic_free_results.json")
    write_aside(path, json.dumps(out, indent=1))
    if args.results:
        write_report(out, args.results, text)
    say(f"wrote {path} in {out['total_seconds'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
