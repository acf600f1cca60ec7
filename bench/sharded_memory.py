#!/usr/bin/env python
"""Per-process peak memory of ppo.py on 2 processes under DDP, DeepSpeed ZeRO-3 and FSDP2, side by side.

The policy is an ~86M-parameter Llama (hidden 768, 12 layers, 12 heads, MLP 2048, the stories260K tokenizer, random
weights) trained in full (``--use_peft False``: the optimizer states, the gradients and a frozen reference are what
sharding divides), scored by a rule (response length), with a value head. Each layout runs the same command under
its config (configs/accelerate/cpu_2proc.yaml, cpu_zero3.yaml, cpu_fsdp2.yaml); ppo.py itself records each
process's peak resident memory (``peak_rss_mib_per_process`` in all_results.json). The rollout gathers the policy
once (ppo.py's default), which costs one full copy per process while it lasts; ``--ds3_gather_for_generation
False`` is measured as well for ZeRO-3.

    python bench/sharded_memory.py [--out .bench/sharded] [--steps 2] [--layouts ddp,zero3,zero3-nogather,fsdp2]

Writes ``bench/results/<device>-<date>-sharded-memory.{json,md}`` with the machine and the commands.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import REPO, run, say, write_aside  # noqa: E402

FIXTURE = os.path.normpath(os.path.join(REPO, "..", "shared", "fixtures", "models", "stories260K"))
CONFIG_86M = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "num_key_value_heads": 12,
              "intermediate_size": 2048, "max_position_embeddings": 512, "tie_word_embeddings": False}
LAYOUTS = {"ddp": ("cpu_2proc.yaml", []), "zero3": ("cpu_zero3.yaml", []),
           "zero3-nogather": ("cpu_zero3.yaml", ["--ds3_gather_for_generation", "False"]),
           "fsdp2": ("cpu_fsdp2.yaml", [])}
TARGET = 0.6  # ZeRO-3's per-process peak over DDP's
RULE = '''def reward(prompt, response):
    """Longer answers score higher (a fixed rule: the benchmark measures memory, not learning)."""
    return min(len(response.split()), 20) / 20.0
'''


def build_inputs(out: str) -> dict:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    policy = os.path.join(out, "policy")
    if not os.path.isfile(os.path.join(policy, "config.json")):
        tokenizer = AutoTokenizer.from_pretrained(FIXTURE)
        config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **CONFIG_86M)
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(policy, safe_serialization=True)
        tokenizer.save_pretrained(policy)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(policy)
    with torch.device("meta"):
        params = sum(p.numel() for p in LlamaForCausalLM(config).parameters())
    prompts = os.path.join(out, "prompts.jsonl")
    names = ["Lily", "Tom", "Ben", "Mia", "Max", "Sue", "Tim", "Anna"]
    with open(prompts, "w", encoding="utf-8") as handle:
        for i in range(64):
            handle.write(json.dumps({"prompt": f"Once upon a time, {names[i % 8]} found a toy number {i}."}) + "\n")
    rule = os.path.join(out, "length_rule.py")
    with open(rule, "w", encoding="utf-8") as handle:
        handle.write(RULE)
    return {"policy": policy, "prompts": prompts, "rule": rule, "parameters": params}


def command(layout: str, inputs: dict, out: str, steps: int) -> list[str]:
    config, extra = LAYOUTS[layout]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            os.path.join("configs", "accelerate", config), "ppo.py", "--model_name_or_path", inputs["policy"],
            "--dataset_name", inputs["prompts"], "--prompt_format", "raw", "--reward_function",
            f"{inputs['rule']}:reward", "--use_peft", "False", "--learning_rate", "1e-6", "--steps", str(steps),
            "--batch_size", "4", "--mini_batch_size", "2", "--ppo_epochs", "1", "--output_max_length", "16",
            "--device", "cpu", "--report_to", "none", "--sample_every", "0", "--seed", "0", "--overwrite_output_dir",
            "True", "--output_dir", os.path.join(out, f"run-{layout}"), *extra]


def markdown(results: dict) -> str:
    lines = [f"# ppo.py per-process peak memory under sharding ({results['device']}, {results['date']})", "",
             f"Machine: {results['machine']}. Policy: {results['parameters'] / 1e6:.1f}M-parameter Llama, full "
             f"fine-tuning, value head, rule reward; 2 processes, {results['steps']} steps of 8 episodes.", "",
             "| layout | peak RSS per process (MiB) | vs DDP | episodes/s | wall (s) |", "|---|---|---|---|---|"]
    for layout, row in results["runs"].items():
        peaks = ", ".join(f"{p:.0f}" for p in row["peak_rss_mib_per_process"])
        lines.append(f"| {layout} | {peaks} | {row['vs_ddp']:.2f}x | {row['episodes_per_second']:.2f} | "
                     f"{row['wall_seconds']:.0f} |")
    zero3 = results["runs"].get("zero3", {}).get("vs_ddp")
    if zero3 is not None:
        lines += ["", f"Target: ZeRO-3's per-process peak at most {TARGET}x DDP's: {zero3:.2f}x, "
                  f"{'met' if zero3 <= TARGET else 'not met'}."]
    lines += ["", "Peak RSS is each process's resident high-water mark (ppo.py's `peak_rss_mib_per_process`): "
              "everything the process held, the interpreter and libraries included, not torch's tensor memory "
              "alone (on CUDA, `peak_memory_mib_per_process` records `max_memory_allocated`)."]
    if results.get("note"):
        lines += ["", results["note"]]
    lines += ["", "Commands:", ""] + [f"    {c}" for c in results["commands"].values()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(REPO, ".bench", "sharded"))
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--layouts", default=",".join(LAYOUTS))
    parser.add_argument("--results", default=os.path.join(REPO, "bench", "results"))
    parser.add_argument("--note", default="", help="a line for the report (what else ran on the machine, ...)")
    args = parser.parse_args(argv)
    layouts = [name.strip() for name in args.layouts.split(",") if name.strip()]
    unknown = [name for name in layouts if name not in LAYOUTS]
    if unknown or "ddp" not in layouts:
        parser.error(f"--layouts: ddp and any of {', '.join(LAYOUTS)} (unknown: {', '.join(unknown) or 'none'})")
    if not os.path.isdir(FIXTURE):
        raise SystemExit(f"error: {FIXTURE} is absent: the benchmark takes its tokenizer from the stories260K fixture")
    os.makedirs(args.out, exist_ok=True)
    inputs = build_inputs(args.out)
    say(f"policy: {inputs['parameters'] / 1e6:.1f}M parameters; layouts {', '.join(layouts)}, {args.steps} steps each")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    runs, commands = {}, {}
    for number, layout in enumerate(layouts, 1):
        cmd = command(layout, inputs, args.out, args.steps)
        commands[layout] = shlex.join(["OMP_NUM_THREADS=1", "python", *cmd[1:]])
        wall = run(cmd, f"{layout} ({number}/{len(layouts)})", log=os.path.join(args.out, f"{layout}.log"), env=env)
        with open(os.path.join(args.out, f"run-{layout}", "all_results.json"), encoding="utf-8") as handle:
            summary = json.load(handle)
        runs[layout] = {"peak_rss_mib_per_process": summary["peak_rss_mib_per_process"],
                        "distributed": summary["distributed"], "episodes_per_second": summary["episodes_per_second"],
                        "wall_seconds": wall}
        say(f"{layout}: peak RSS per process {summary['peak_rss_mib_per_process']} MiB, "
            f"{summary['episodes_per_second']:.2f} episodes/s, {wall:.0f} s")
    ddp = max(runs["ddp"]["peak_rss_mib_per_process"])
    for row in runs.values():
        row["vs_ddp"] = max(row["peak_rss_mib_per_process"]) / ddp
    from machine import describe

    device, machine = "cpu", describe("cpu")
    results = {"device": device, "date": time.strftime("%Y-%m-%d"), "machine_details": machine,
               "machine": f"{machine['cpu_model']}, {machine['usable_cores']} usable cores, "
                          f"{(machine['memory_bytes'] or 0) / 2**30:.0f} GiB",
               "parameters": inputs["parameters"], "steps": args.steps, "runs": runs, "commands": commands,
               "target": {"zero3_vs_ddp_at_most": TARGET}, "note": args.note}
    os.makedirs(args.results, exist_ok=True)
    stem = os.path.join(args.results, f"{device}-{results['date']}-sharded-memory")
    write_aside(stem + ".json", json.dumps(results, indent=1))
    write_aside(stem + ".md", markdown(results))
    print(markdown(results))
    say(f"wrote {stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
