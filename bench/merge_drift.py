#!/usr/bin/env python
"""How far PPO's merged sampling moves the base weights: LoRA merged into the weights and taken back out
(PEFT's ``merge_adapter`` / ``unmerge_adapter``, what ``rlhfkit.ppo.policy.merged_for_sampling`` does around each
rollout's generation) for many cycles, in float32 and bf16, with the adapter fixed and with it moving between
cycles as training moves it. The base weights are also PPO's reference model (the adapter disabled), so their drift
is the question. Prints, after each number of cycles, the largest change of a base weight over the largest base
weight.

    python bench/merge_drift.py [--model ../shared/fixtures/models/stories260K] [--cycles 1,100,1000,3000]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import REPO  # noqa: E402

FIXTURE = os.path.normpath(os.path.join(REPO, "..", "shared", "fixtures", "models", "stories260K"))
STEP = 0.002  # the adapter's move per cycle (per element, Gaussian): about an Adam step at PPO's learning rates


def drift(model_path: str, dtype, moving: bool, cycles: list[int]) -> list[tuple[int, float]]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    model = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                            task_type="CAUSAL_LM"))
    lora = [p for name, p in model.named_parameters() if "lora_" in name]
    with torch.no_grad():  # PEFT starts B at zero (a no-op adapter): give it a trained adapter's size
        for p in lora:
            p.add_(torch.randn_like(p) * 0.05)
    before = {name: p.detach().clone() for name, p in model.named_parameters() if "base_layer" in name}
    done, rows = 0, []
    for target in cycles:
        while done < target:
            if moving:
                with torch.no_grad():
                    for p in lora:
                        p.add_(torch.randn_like(p) * STEP)
            model.merge_adapter()
            model.unmerge_adapter()
            done += 1
        worst = max(((p.detach().float() - before[name].float()).abs().max() / before[name].float().abs().max())
                    .item() for name, p in model.named_parameters() if name in before)
        rows.append((done, worst))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=FIXTURE, help="a causal LM folder (default: the stories260K fixture)")
    parser.add_argument("--cycles", default="1,100,1000,3000", help="report after these numbers of cycles")
    args = parser.parse_args()
    if not os.path.isdir(args.model):
        sys.exit(f"error: no model at {args.model}: pass --model with a local causal LM folder")
    import torch

    cycles = sorted(int(c) for c in args.cycles.split(","))
    print(f"model {args.model}, LoRA r=16 on every linear layer; max|dW| / max|W| of the base weights")
    for dtype in (torch.float32, torch.bfloat16):
        for moving in (False, True):
            rows = drift(args.model, dtype, moving, cycles)
            what = f"adapter moving {STEP}/cycle" if moving else "adapter fixed"
            print(f"{str(dtype).removeprefix('torch.'):8s} {what:26s} "
                  + "  ".join(f"{n} cycles: {d:.1e}" for n, d in rows), flush=True)


if __name__ == "__main__":
    main()
