#!/usr/bin/env python
"""Sampling speed of transformers' ``generate`` against the lean Llama decoding loop (``rlhfkit.lean_decode``), side
by side on the same model, prompts and settings; interleaved repeats, so both ways see the same machine state.

    python bench/decode_step.py --model PATH [--rows 32] [--prompt 45] [--tokens 32] [--repeats 5] [--threads N]
                                [--lora R]

Prompts are random token ids, left-padded (a quarter of the rows 5 tokens shorter); every response runs the full
``--tokens`` (no stop token), sampled at temperature 0.7. Prints per way the milliseconds per generated token (the
prompt's pass included) and tokens/s, each the median (min-max) over the repeats, and the ratio. ``--lora R``: the
model with a LoRA adapter of rank R on every linear layer, unmerged (as PPO's policy samples without
``--merge_adapter_for_generation``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a Llama checkpoint (folder or hub id)")
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--prompt", type=int, default=45, help="prompt tokens (the longest row)")
    parser.add_argument("--tokens", type=int, default=32, help="tokens generated per row")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--lora", type=int, default=0, help="an unmerged LoRA adapter of this rank (0: none)")
    args = parser.parse_args(argv)
    import torch
    from transformers import AutoModelForCausalLM

    from rlhfkit import lean_decode, sampling

    if args.threads:
        torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    if args.lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=args.lora, lora_alpha=2 * args.lora, lora_dropout=0.0,
                                                 target_modules="all-linear")).eval()
    config = sampling.generation_config(args.tokens, [], 0, temperature=0.7)
    why = lean_decode.why_not(model, config)
    if why:
        raise SystemExit(f"error: the lean loop does not apply to {args.model}: {why}")
    generator = torch.Generator().manual_seed(0)
    queries = torch.randint(3, model.config.vocab_size, (args.rows, args.prompt), generator=generator)
    mask = torch.ones_like(queries)
    mask[: args.rows // 4, :5] = 0
    seconds: dict[str, list[float]] = {"generate": [], "lean": []}
    for repeat in range(args.repeats + 1):  # the first round warms up
        for way in seconds:
            started = time.perf_counter()
            out = sampling.generate(model, queries, mask, config, lean=way == "lean")
            elapsed = time.perf_counter() - started
            assert out.shape == (args.rows, args.tokens)
            if repeat:
                seconds[way].append(elapsed)
    adapter = f", LoRA rank {args.lora} unmerged" if args.lora else ""
    print(f"{args.model}{adapter}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, {args.rows} rows x "
          f"{args.prompt} prompt + {args.tokens} generated tokens, {torch.get_num_threads()} threads, "
          f"{args.repeats} repeats")
    medians = {}
    for way, values in seconds.items():
        per_token = [s / args.tokens * 1000 for s in values]
        rate = [args.rows * args.tokens / s for s in values]
        medians[way] = statistics.median(rate)
        print(f"  {way:9s} {statistics.median(per_token):8.2f} ms per token ({min(per_token):.2f}-{max(per_token):.2f})"
              f"  {statistics.median(rate):9.0f} tokens/s ({min(rate):.0f}-{max(rate):.0f})")
    print(f"  lean / generate: {medians['lean'] / medians['generate']:.2f}x tokens/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
