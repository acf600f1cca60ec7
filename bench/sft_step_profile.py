#!/usr/bin/env python
"""Where an SFT step's time goes (a diagnostic, not a benchmark with a peer): the suite's SFT model and rows,

1. the model alone, forward+backward under bf16 autocast on one batch, padded (transformers' SDPA) and
   padding-free (the rows packed into one, ``rlhfkit.attention``'s per-row attention), timed and profiled;
2. ``sft.py`` itself on the same rows: every step timed end to end, steps 3-4 under torch.profiler.

    python bench/sft_step_profile.py [--device cuda|cpu] [--size 350m] [--rows 64] [--out .bench/sft-profile]

Prints the timings and the profiler's tables (by device time and by CPU time); a step of ``sft.py`` far longer
than the model's forward+backward means the time goes elsewhere in the training loop.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH)
sys.path.insert(0, os.path.dirname(BENCH))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--size", default="350m", help="bench/sft_inputs.py's model size (tiny, 40m, 350m)")
    parser.add_argument("--rows", type=int, default=64, help="rows per batch")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(BENCH), ".bench", "sft-profile"))
    args = parser.parse_args(argv)
    import sft_inputs
    import torch
    from torch.profiler import ProfilerActivity

    cuda = args.device == "cuda"
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    sft_inputs.build_model(args.size, os.path.join(args.out, "model"))
    data = sft_inputs.write_sft_data(args.out, args.rows * 6, long=True, eval_rows=0)
    model_dir = os.path.join(args.out, "model")

    time_model_alone(args, model_dir, data, activities, sort, sync)
    if cuda:
        torch.cuda.empty_cache()
    profile_sft_steps(args, model_dir, data, activities, sort, sync)
    return 0


def time_model_alone(args, model_dir: str, data: dict, activities, sort: str, sync) -> None:
    """1. the model alone: padded and padding-free forward+backward, timed; one padding-free pass profiled."""
    import torch
    from torch.profiler import profile
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhfkit import attention

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    with open(os.path.join(data["trl"], "train.jsonl"), encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle][:args.rows]
    ids = [tokenizer(row["prompt"] + row["completion"])["input_ids"] for row in rows]
    lengths = [len(x) for x in ids]
    width = max(lengths)
    print(f"{len(ids)} rows, {sum(lengths)} tokens, the longest {width}", flush=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir).to(args.device).train()
    padded = torch.full((len(ids), width), tokenizer.pad_token_id)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        padded[i, :len(row)], mask[i, :len(row)] = torch.tensor(row), 1
    padded, mask = padded.to(args.device), mask.to(args.device)
    packed = torch.tensor([sum(ids, [])], device=args.device)
    positions = torch.tensor([[p for n in lengths for p in range(n)]], device=args.device)
    bounds = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=args.device)

    def step(packed_row: bool):
        with torch.autocast(args.device, torch.bfloat16):
            if packed_row:
                out = model(input_ids=packed, position_ids=positions, cu_seq_lens_q=bounds, cu_seq_lens_k=bounds,
                            max_length_q=width, max_length_k=width, labels=packed)
            else:
                out = model(input_ids=padded, attention_mask=mask, labels=padded)
        out.loss.backward()
        model.zero_grad(set_to_none=True)

    attention.register()
    for name, implementation, packed_row in (("padded, sdpa", "sdpa", False),
                                             (f"padding-free, {attention.VARLEN}", attention.VARLEN, True)):
        model.set_attn_implementation(implementation)
        for _ in range(2):
            step(packed_row)
        sync()
        started = time.perf_counter()
        for _ in range(4):
            step(packed_row)
        sync()
        print(f"{name}: {(time.perf_counter() - started) / 4 * 1000:.1f} ms per forward+backward", flush=True)
    with profile(activities=activities) as prof:
        step(True)
        sync()
    print(prof.key_averages().table(sort_by=sort, row_limit=15), flush=True)


def profile_sft_steps(args, model_dir: str, data: dict, activities, sort: str, sync) -> None:
    """2. sft.py on the same rows: every step timed end to end, steps 3-4 profiled."""
    import transformers
    from torch.profiler import profile

    state: dict = {"n": 0}
    training_step = transformers.Trainer.training_step

    def timed_training_step(self, *a, **k):
        state["n"] += 1
        sync()
        now = time.perf_counter()
        if "last" in state:
            print(f"sft.py step {state['n'] - 1}: {now - state['last']:.2f} s end to end", flush=True)
        state["last"] = now
        if state["n"] == 1:  # what the loop runs with: the usual suspects of a slow step
            parameter = next(self.model.parameters())
            print(f"sft.py's loop: optimizer {type(self.optimizer).__name__} (--optim {self.args.optim}), "
                  f"max_grad_norm {self.args.max_grad_norm}, bf16 {self.args.bf16}, weights {parameter.dtype} on "
                  f"{parameter.device}, attention {self.model.config._attn_implementation}, gradient "
                  f"checkpointing {self.args.gradient_checkpointing}, collator {type(self.data_collator).__name__} "
                  f"(padding_free {getattr(self.data_collator, 'padding_free', None)})", flush=True)
        if state["n"] == 3:
            state["prof"] = profile(activities=activities)
            state["prof"].__enter__()
        elif state["n"] == 5:
            state["prof"].__exit__(None, None, None)
            averages = state.pop("prof").key_averages()
            print(averages.table(sort_by=sort, row_limit=20), flush=True)
            print(averages.table(sort_by="self_cpu_time_total", row_limit=25), flush=True)
        return training_step(self, *a, **k)

    transformers.Trainer.training_step = timed_training_step
    sys.argv = ["sft.py", "--model_name_or_path", model_dir, "--max_steps", "6", "--per_device_train_batch_size",
                str(args.rows), "--save_strategy", "no", "--dataset_name", data["ours"], "--output_dir",
                os.path.join(args.out, "sft"), "--overwrite_output_dir", "--use_peft", "False", "--device",
                args.device, "--report_to", "none"]
    runpy.run_path(os.path.join(os.path.dirname(BENCH), "sft.py"), run_name="__main__")


if __name__ == "__main__":
    sys.exit(main())
