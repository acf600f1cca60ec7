#!/usr/bin/env python
"""One forward and backward pass of a LoRA model, each way ``ppo.py --fuse_lora`` can compute its LoRA layers:
the bytes autograd keeps for the backward pass and the time of the pass.

    python bench/lora_products.py --model DIR [--dtype float32|bfloat16] [--rows 4] [--tokens 75] [--rank 16]
                                  [--repeats 5] [--ways peft,products,folded] [--device cpu|cuda]

``peft``: PEFT's own forward (``--fuse_lora off``); ``products``: :class:`rlhfkit.fused_lora.LoRAProducts`;
``folded``: the adapter folded into the weight (``--fuse_lora on``; only where the adapter shares the weight's
dtype). The model is loaded in ``--dtype`` with a LoRA adapter of rank ``--rank`` on every linear layer (PEFT keeps
it in float32 over a bfloat16 model), ``B`` random so the adapter is at work. Kept bytes are the storages autograd's
saved-tensor hooks see during the forward pass, the model's parameters left out (what a training step holds
between its forward and its backward pass, per micro-batch). Times are medians over ``--repeats`` passes, the ways
interleaved. On CUDA also the pass's peak allocated memory (``max_memory_allocated`` over the model's own). Prints
one JSON line per way.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a causal LM folder (or hub id)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=75)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ways", default="peft,products,folded")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args()
    modes = {"peft": "off", "products": "auto", "folded": "on"}
    ways = [w for w in args.ways.split(",") if w]
    if not ways or not all(w in modes for w in ways):
        parser.error(f"--ways takes a comma-separated list of {', '.join(modes)}")

    import contextlib
    from unittest import mock

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from rlhfkit import fused_lora

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=getattr(torch, args.dtype))
    model = get_peft_model(model, LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0,
                                             target_modules="all-linear"))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.02)
    model.to(args.device).train()
    cuda = args.device == "cuda"
    vocab = model.config.vocab_size
    ids = torch.randint(3, vocab, (args.rows, args.tokens)).to(args.device)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    adapter_dtype = next(p.dtype for n, p in model.named_parameters() if "lora_A" in n)
    if "folded" in ways and adapter_dtype != getattr(torch, args.dtype):
        ways.remove("folded")  # the adapter's dtype differs from the weight's: nothing folds

    def one_pass(way: str, keep: dict | None = None):
        def pack(tensor):
            if keep is not None:
                storage = tensor.untyped_storage()
                if storage.data_ptr() not in params:
                    keep[storage.data_ptr()] = storage.nbytes()
            return tensor

        model.zero_grad(set_to_none=True)
        # "products": every layer in the products form, whatever the cost rule would fold
        no_folding = (mock.patch.object(fused_lora, "MAX_COST_RATIO", 0.0) if way == "products"
                      else contextlib.nullcontext())
        with no_folding, fused_lora.fused(model, modes[way]) as calls:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
                logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
            logits.float().logsumexp(-1).mean().backward()
        return dict(calls)

    results = {}
    for way in ways:
        kept: dict = {}
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        calls = one_pass(way, kept)
        results[way] = {"kept_bytes": sum(kept.values()), "calls": calls, "seconds": [],
                        "peak_mib": (torch.cuda.max_memory_allocated() - before) / 2**20 if cuda else None}
    for _ in range(args.repeats):
        for way in ways:
            started = time.perf_counter()
            one_pass(way)
            if cuda:
                torch.cuda.synchronize()
            results[way]["seconds"].append(time.perf_counter() - started)
    for way in ways:
        r = results[way]
        print(json.dumps({"way": way, "model": args.model, "dtype": args.dtype, "adapter_dtype": str(adapter_dtype),
                          "rows": args.rows, "tokens": args.tokens, "rank": args.rank,
                          "kept_mib": round(r["kept_bytes"] / 2**20, 1), "kept_bytes": r["kept_bytes"],
                          "pass_peak_mib": None if r["peak_mib"] is None else round(r["peak_mib"], 1),
                          "calls": r["calls"],
                          "seconds_median": round(statistics.median(r["seconds"]), 4),
                          "device": args.device, "torch_threads": torch.get_num_threads()}), flush=True)


if __name__ == "__main__":
    main()
