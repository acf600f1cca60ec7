#!/usr/bin/env python
"""Per-process peak memory of ppo.py (and sft.py) under DDP, DeepSpeed ZeRO-3 and FSDP2, side by side.

The policy is an ~86M-parameter Llama (hidden 768, 12 layers, 12 heads, MLP 2048, the stories260K tokenizer, random
weights) trained in full (``--use_peft False``: the optimizer states, the gradients and a frozen reference are what
sharding divides), scored by a rule (response length), with a value head. Each layout runs the same command under
its config (configs/accelerate/cpu_2proc.yaml, cpu_zero3.yaml, cpu_fsdp2.yaml); ppo.py itself records each
process's peak resident memory (``peak_rss_mib_per_process`` in all_results.json). The rollout gathers the policy
once (ppo.py's default), which costs one full copy per process while it lasts; ``--ds3_gather_for_generation
False`` is measured as well for ZeRO-3.

    python bench/sharded_memory.py [--out .bench/sharded] [--steps 2] [--layouts ddp,zero3,zero3-nogather,fsdp2]
                                   [--precision fp32|bf16] [--num_processes 2]
    python bench/sharded_memory.py --device cuda [--num_processes N] [--scripts ppo,sft]

On CUDA the layouts run under the GPU configs (configs/accelerate/ddp.yaml, zero3.yaml, fsdp.yaml) with bf16 and
``--num_processes`` (default: every visible GPU), and the figure is each process's ``max_memory_allocated``
(``peak_memory_mib_per_process``). ``--scripts ppo,sft`` adds sft.py on the same model (full fine-tuning on the
prompts as text): tokens/s and peak memory per layout.

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
# layout: (CPU config: 2 processes, GPU config, more ppo.py flags)
LAYOUTS = {"ddp": ("cpu_2proc.yaml", "ddp.yaml", []), "zero3": ("cpu_zero3.yaml", "zero3.yaml", []),
           "zero3-nogather": ("cpu_zero3.yaml", "zero3.yaml", ["--ds3_gather_for_generation", "False"]),
           "fsdp2": ("cpu_fsdp2.yaml", "fsdp.yaml", [])}
SCRIPTS = ("ppo", "sft")
# the resident floor of a ppo.py process before it loads a model: the interpreter and the libraries it imports. Its
# VmRSS, not ru_maxrss: Linux carries the parent's high-water mark across fork and exec, and this benchmark's own
# process has held the 86M model by then
FLOOR_CODE = ("import sys; sys.argv = ['ppo.py']; import torch, transformers, trl, peft, accelerate, deepspeed, ppo, "
              "rlhfkit.ppo.trainer; print(next(int(line.split()[1]) for line in open('/proc/self/status') "
              "if line.startswith('VmRSS')) / 1024)")
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
    texts = os.path.join(out, "texts.jsonl")  # sft.py's rows: short stories of about 100 tokens
    with open(texts, "w", encoding="utf-8") as handle:
        for i in range(256):
            name, other = names[i % 8], names[(i + 3) % 8]
            handle.write(json.dumps({"text": f"Once upon a time, {name} found a toy number {i}. {name} showed it to "
                                             f"{other}. {other} smiled and said it was the best toy in the park. "
                                             f"They played with it all day, and at night {name} put it under the "
                                             f"bed so that it would be there in the morning. The end."}) + "\n")
    return {"policy": policy, "prompts": prompts, "rule": rule, "texts": texts, "parameters": params}


def command(script: str, layout: str, inputs: dict, out: str, steps: int, device: str,
            num_processes: int, precision: str = "") -> list[str]:
    """The launch of one run. ``precision``: "fp32" or "bf16" (default: fp32 on CPU, bf16 on CUDA, as the config
    files say); bf16 on CPU overrides the CPU configs' ``mixed_precision: 'no'`` on the launch line."""
    cpu_config, gpu_config, ppo_extra = LAYOUTS[layout]
    precision = precision or ("fp32" if device == "cpu" else "bf16")
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              os.path.join("configs", "accelerate", cpu_config if device == "cpu" else gpu_config)]
    if device == "cuda" or num_processes != 2:  # the CPU configs name 2 processes
        launch += ["--num_processes", str(num_processes)]
    if device == "cpu" and precision == "bf16":
        launch += ["--mixed_precision", "bf16"]
    # accelerate's mixed precision and the script's --bf16 must agree
    precision = ["--bf16", str(precision == "bf16")]
    common = ["--model_name_or_path", inputs["policy"], "--use_peft", "False", "--report_to", "none", "--seed", "0",
              "--overwrite_output_dir", "True", "--output_dir", os.path.join(out, f"run-{script}-{layout}"),
              *precision]
    if script == "ppo":
        return [*launch, "ppo.py", *common, "--dataset_name", inputs["prompts"], "--prompt_format", "raw",
                "--reward_function", f"{inputs['rule']}:reward", "--learning_rate", "1e-6", "--steps", str(steps),
                "--batch_size", "4", "--mini_batch_size", "2", "--ppo_epochs", "1", "--output_max_length", "16",
                "--device", device, "--sample_every", "0", *ppo_extra]
    return [*launch, "sft.py", *common, "--dataset_name", inputs["texts"], "--learning_rate", "1e-5",
            "--max_steps", str(steps * 4), "--per_device_train_batch_size", "8", "--save_strategy", "no",
            "--logging_steps", "1"]


def floor_mib() -> float:
    """Peak RSS (MiB) of a process that imports what ppo.py imports and loads nothing."""
    import subprocess

    out = subprocess.run([sys.executable, "-c", FLOOR_CODE], cwd=REPO, capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO})
    return float(out.stdout.strip().splitlines()[-1])


def bound(parameters: int, processes: int, floor: float, runs: dict) -> str:
    """What the model states allow, fp32 full fine-tuning with Adam. A DDP process holds the policy's weights,
    gradients and two moments (16 bytes a parameter) and the frozen reference (4); ppo.py's DDP keeps its gradients
    as views into its all-reduce buckets (``gradient_as_bucket_view=True``), so the buckets add no copy. ZeRO-3
    divides those 20 bytes by the processes (in fp32 DeepSpeed 0.19 trains its fp32 partition in place: no master
    copy); the rollout gathers the whole policy (4 bytes, unless ``--ds3_gather_for_generation False``). What DDP
    holds beyond the floor and those (activations, the sampling cache, allocator slack) is counted for ZeRO-3
    unchanged."""
    mib = parameters / 2**20
    ddp_states, zero3_states, gathered = 20 * mib, 20 * mib / processes, 4 * mib
    ddp = max(runs["ddp"]["peak_mib_per_process"])
    rest = ddp - floor - ddp_states
    best = floor + zero3_states + rest
    return (f"By arithmetic (fp32, Adam): the floor, a process that imported what ppo.py imports and loaded nothing, "
            f"{floor:.0f} MiB; model states per process: DDP {ddp_states:.0f} MiB (weights, gradients, Adam's two "
            f"moments and the frozen reference: 20 bytes a parameter), ZeRO-3 "
            f"{zero3_states:.0f} MiB (20 bytes divided by {processes}), plus {gathered:.0f} MiB while the rollout "
            f"holds the gathered policy. With DDP's other {rest:.0f} MiB (activations, sampling, allocator) counted "
            f"for both, ZeRO-3's peak would be about {best + gathered:.0f} MiB ({(best + gathered) / ddp:.2f}x DDP's), "
            f"{best:.0f} MiB ({best / ddp:.2f}x) without the gather.")


def markdown(results: dict) -> str:
    cuda = results["device"] == "cuda"
    precision = results.get("precision", "bf16" if cuda else "fp32")
    memory = "peak GPU memory per process (MiB)" if cuda else "peak RSS per process (MiB)"
    processes = results.get("num_processes", 2)
    lines = [f"# Per-process peak memory under sharding ({results['device']}, {results['date']})", "",
             f"Machine: {results['machine']}. Model: {results['parameters'] / 1e6:.1f}M-parameter Llama, full "
             f"fine-tuning, {precision}; {processes} process(es). ppo.py: value head, rule "
             f"reward, {results['steps']} steps of {4 * processes} episodes. sft.py: {4 * results['steps']} steps "
             f"of 8 rows per process.", ""]
    for script in results.get("scripts", ["ppo"]):
        rows = {layout: row for layout, row in results["runs"].items() if row.get("script", "ppo") == script}
        if not rows:
            continue
        speed = "episodes/s" if script == "ppo" else "tokens/s"
        lines += [f"## {script}.py", "", f"| layout | {memory} | vs DDP | {speed} | wall (s) |", "|---|---|---|---|---|"]
        for layout, row in rows.items():
            peaks = ", ".join(f"{p:.0f}" for p in row["peak_mib_per_process"])
            lines.append(f"| {row.get('layout', layout)} | {peaks} | {row['vs_ddp']:.2f}x | {row['speed']:.2f} | "
                         f"{row['wall_seconds']:.0f} |")
        lines.append("")
    zero3 = results["runs"].get("zero3", {}).get("vs_ddp")
    if zero3 is not None and processes > 1:
        if processes == 2:
            verdict = f", {'met' if zero3 <= TARGET else 'not met'}."
        else:  # the target is set for 2 processes: another count is reported, not judged
            verdict = f" on {processes} processes ({'within' if zero3 <= TARGET else 'above'} it, but the target names 2)."
        lines += [f"Target: ZeRO-3's per-process peak at most {TARGET}x DDP's (ppo.py, 2 processes): {zero3:.2f}x"
                  f"{verdict}", ""]
    if results.get("floor_mib") and precision == "fp32" and processes > 1:
        lines += [bound(results["parameters"], processes, results["floor_mib"], results["runs"]), ""]
    elif processes == 1:
        lines += ["One process: nothing is divided, so this checks that each layout runs (DeepSpeed's engine, FSDP2's "
                  "wrapping, gathering for generation, saving) and what it costs against plain single-device "
                  "training; it says nothing about the saving of N processes.", ""]
    if cuda:
        lines.append("Peak GPU memory is `torch.cuda.max_memory_allocated` per process (`peak_memory_mib_per_process` "
                     "in all_results.json): torch's tensors, not the CUDA context.")
    else:
        lines.append("Peak RSS is each process's resident high-water mark (`peak_rss_mib_per_process`): everything "
                     "the process held, the interpreter and libraries included, not torch's tensor memory alone.")
    if results.get("note"):
        lines += ["", results["note"]]
    lines += ["", "Commands:", ""] + [f"    {c}" for c in results["commands"].values()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(REPO, ".bench", "sharded"))
    parser.add_argument("--steps", type=int, default=2, help="ppo.py steps (sft.py: 4x as many)")
    parser.add_argument("--layouts", default=",".join(LAYOUTS))
    parser.add_argument("--scripts", default="ppo", help=f"comma-separated, of: {', '.join(SCRIPTS)}")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--num_processes", type=int, default=0, help="processes (default: 2 on CPU, every visible GPU on CUDA)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="",
                        help="default: fp32 on CPU (the CPU configs), bf16 on CUDA (the GPU configs)")
    parser.add_argument("--results", default=os.path.join(REPO, "bench", "results"))
    parser.add_argument("--note", default="", help="a line for the report (what else ran on the machine, ...)")
    args = parser.parse_args(argv)
    layouts = [name.strip() for name in args.layouts.split(",") if name.strip()]
    unknown = [name for name in layouts if name not in LAYOUTS]
    if unknown or "ddp" not in layouts:
        parser.error(f"--layouts: ddp and any of {', '.join(LAYOUTS)} (unknown: {', '.join(unknown) or 'none'})")
    scripts = [name.strip() for name in args.scripts.split(",") if name.strip()]
    if not scripts or any(name not in SCRIPTS for name in scripts):
        parser.error(f"--scripts: any of {', '.join(SCRIPTS)}")
    if not os.path.isdir(FIXTURE):
        raise SystemExit(f"error: {FIXTURE} is absent: the benchmark takes its tokenizer from the stories260K fixture")
    processes = args.num_processes or 2
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("error: --device cuda but torch sees no GPU: run with --device cpu")
        processes = args.num_processes or torch.cuda.device_count()
    os.makedirs(args.out, exist_ok=True)
    inputs = build_inputs(args.out)
    floor = floor_mib() if args.device == "cpu" else None
    say(f"model: {inputs['parameters'] / 1e6:.1f}M parameters; {', '.join(scripts)} under {', '.join(layouts)}, "
        f"{processes} process(es) on {args.device}")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    memory_key = "peak_memory_mib_per_process" if args.device == "cuda" else "peak_rss_mib_per_process"
    runs, commands = {}, {}
    plan = [(script, layout) for script in scripts for layout in layouts
            if not (script == "sft" and LAYOUTS[layout][2])]  # ppo.py's own variants only for ppo.py
    for number, (script, layout) in enumerate(plan, 1):
        key = layout if script == "ppo" else f"{script}-{layout}"
        cmd = command(script, layout, inputs, args.out, args.steps, args.device, processes, args.precision)
        commands[key] = shlex.join(["OMP_NUM_THREADS=1", "python", *cmd[1:]])
        wall = run(cmd, f"{key} ({number}/{len(plan)})", log=os.path.join(args.out, f"{key}.log"), env=env)
        with open(os.path.join(args.out, f"run-{script}-{layout}", "all_results.json"), encoding="utf-8") as handle:
            summary = json.load(handle)
        speed = summary["episodes_per_second"] if script == "ppo" else summary.get("train_tokens_per_second")
        runs[key] = {"script": script, "layout": layout, "peak_mib_per_process": summary[memory_key],
                     "distributed": summary.get("distributed"), "speed": speed, "wall_seconds": wall}
        say(f"{key}: {memory_key} {summary[memory_key]}, {speed:.2f} {'episodes' if script == 'ppo' else 'tokens'}"
            f"/s, {wall:.0f} s")
    for script in scripts:
        ddp = max(runs["ddp" if script == "ppo" else f"{script}-ddp"]["peak_mib_per_process"])
        for row in runs.values():
            if row["script"] == script:
                row["vs_ddp"] = max(row["peak_mib_per_process"]) / ddp
    from machine import describe

    machine = describe(args.device)
    where = (f"{machine['cpu_model']}, {machine['usable_cores']} usable cores, "
             f"{(machine['memory_bytes'] or 0) / 2**30:.0f} GiB")
    if args.device == "cuda":
        where = f"{'; '.join(machine.get('gpus') or ['GPU'])} ({where})"
    results = {"device": args.device, "date": time.strftime("%Y-%m-%d"), "machine_details": machine,
               "machine": where, "parameters": inputs["parameters"], "steps": args.steps, "scripts": scripts,
               "num_processes": processes, "precision": args.precision or ("fp32" if args.device == "cpu" else "bf16"),
               "memory_measure": memory_key, "floor_mib": floor, "runs": runs, "commands": commands,
               "target": {"zero3_vs_ddp_at_most": TARGET}, "note": args.note}
    os.makedirs(args.results, exist_ok=True)
    stem = os.path.join(args.results, f"{args.device}-{results['date']}-sharded-memory"
                                      f"{'-' + args.precision if args.precision else ''}")
    base, number = stem, 1
    while os.path.exists(stem + ".json") or os.path.exists(stem + ".md"):  # never over an earlier result
        number += 1
        stem = f"{base}-{number}"
    write_aside(stem + ".json", json.dumps(results, indent=1))
    write_aside(stem + ".md", markdown(results))
    print(markdown(results))
    say(f"wrote {stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
