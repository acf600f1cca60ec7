#!/usr/bin/env python
"""Held-out loss of a trained causal LM, the same way for every side of the SFT benchmark:

    python bench/eval_loss.py --model DIR --data sft_eval.jsonl     # prints {"eval_loss": ...}

Mean cross-entropy over completion tokens (EOS included) of prompt/completion rows, in float32, one row at a
time (no padding to get wrong).
"""

from __future__ import annotations

import argparse
import json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).to(args.device).eval()
    total, count = 0.0, 0
    with open(args.data, encoding="utf-8") as handle, torch.no_grad():
        for line in handle:
            row = json.loads(line)
            prompt = tokenizer(row["prompt"])["input_ids"]
            ids = tokenizer(row["prompt"] + row["completion"])["input_ids"] + [tokenizer.eos_token_id]
            tensor = torch.tensor([ids], device=args.device)
            logits = model(input_ids=tensor).logits[0, :-1].float()
            targets = tensor[0, 1:]
            losses = torch.nn.functional.cross_entropy(logits, targets, reduction="none")[len(prompt) - 1:]
            total += float(losses.sum())
            count += losses.numel()
    print(json.dumps({"eval_loss": total / max(count, 1), "eval_tokens": count}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
