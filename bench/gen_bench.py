#!/usr/bin/env python
"""Generation throughput through the toolkit's own path (``rlhfkit.sampling.generate_text``, what
``run_generation.py`` and the comparison use): KV cache, left padding, sampling at temperature 1.

    python bench/gen_bench.py --model DIR --batch_size 16 --dtype bfloat16 --device cpu [--lean_decode auto|off]
                              --result R.json

Generated tokens/s = new tokens (up to and including EOS) / wall time of the ``generate`` calls, after one
warm-up call. Prompts: the toy task's questions in the toolkit's format. ``--lean_decode``: as run_generation.py's
(default auto: on CPU a Llama with float32 weights decodes with :mod:`rlhfkit.lean_decode`); the result records
which way it decoded.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--batch_size", type=int, required=True)
    parser.add_argument("--batches", type=int, default=2, help="generate calls to time")
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--lean_decode", choices=("auto", "off"), default="auto")
    parser.add_argument("--result", required=True)
    args = parser.parse_args(argv)
    sys.path.insert(0, REPO)

    import random

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhfkit import sampling, toy

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=getattr(torch, args.dtype)).to(args.device)
    rng = random.Random(0)
    questions = [toy.make_question(rng) for _ in range(args.batch_size * args.batches)]
    sampling.generate_text(model, tokenizer, questions[:1], max_new_tokens=8, batch_size=1, do_sample=True,
                           lean_decode=args.lean_decode)  # warm-up
    if args.device == "cuda":
        torch.cuda.synchronize()
    result = sampling.generate_text(model, tokenizer, questions, max_new_tokens=args.max_new_tokens,
                                    batch_size=args.batch_size, do_sample=True, temperature=1.0,
                                    lean_decode=args.lean_decode)
    record = {"batch_size": args.batch_size, "dtype": args.dtype, "prompts": len(questions),
              "decoding": result.decoding,
              "new_tokens": result.new_tokens, "seconds": result.seconds,
              "tokens_per_second": result.tokens_per_second,
              "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
              "cuda_max_memory_allocated": torch.cuda.max_memory_allocated() if args.device == "cuda" else None}
    with open(args.result, "w", encoding="utf-8") as handle:
        json.dump(record, handle)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
