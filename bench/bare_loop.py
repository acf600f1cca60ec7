#!/usr/bin/env python
"""The ceiling for SFT throughput: a bare PyTorch training loop on the same model and the same non-padding
tokens as ``sft.py``, with nothing around it (no Trainer, no callbacks, no logging, no metrics).

    python bench/bare_loop.py --model DIR --data FILE.jsonl --steps N --batch_size 8 [--bf16] [--group_by_length]
        --result RESULT.json

Each step: forward, completion-only cross-entropy, backward, fused AdamW step (lr 2e-5, as TRL's default), zero
grad. Rows are tokenised as ``prompt + completion + EOS`` (the ids TRL's SFTTrainer makes for plain-text
prompt/completion rows, padded on the right); ``--group_by_length`` orders them as transformers'
LengthGroupedSampler does (its own function: mega-batches of up to 50 batches sorted by length). ``--bf16``:
autocast to bfloat16 on the model's device with fp32 weights, as the Trainer's ``--bf16`` does. Writes the same
per-step figures as ``bench/trainer_probe.py``.
"""

from __future__ import annotations

import argparse
import json
import resource
import time


def batches(rows: list[list[int]], batch_size: int, steps: int, group: bool, seed: int) -> list[list[int]]:
    """Index batches for ``steps`` steps, epoch after epoch: a seeded shuffle, or with ``group`` transformers' own
    length grouping (``get_length_grouped_indices``, what the Trainer's LengthGroupedSampler uses)."""
    import torch
    from transformers.trainer_pt_utils import get_length_grouped_indices

    out: list[list[int]] = []
    epoch = 0
    while len(out) < steps:
        generator = torch.Generator().manual_seed(seed + epoch)
        if group:
            order = get_length_grouped_indices([len(r) for r in rows], batch_size, generator=generator)
        else:
            order = torch.randperm(len(rows), generator=generator).tolist()
        out += [order[i:i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]
        epoch += 1
    return out[:steps]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True, help="prompt/completion jsonl (rendered, as TRL reads it)")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--learning_rate", type=float, default=2e-5)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--group_by_length", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--result", required=True)
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).to(device)
    model.train()
    with open(args.data, encoding="utf-8") as handle:
        raw = [json.loads(line) for line in handle]
    rows, prompt_lengths = [], []
    for row in raw:
        prompt = tokenizer(row["prompt"])["input_ids"]
        full = tokenizer(row["prompt"] + row["completion"])["input_ids"] + [tokenizer.eos_token_id]
        rows.append(full)
        prompt_lengths.append(len(prompt))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, fused=True)
    pad = tokenizer.pad_token_id
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    record = {"step_seconds": [], "step_rows": [], "step_tokens": [], "precision": "bf16" if args.bf16 else "fp32",
              "gradient_checkpointing": False, "batch_size": args.batch_size, "torch_threads": torch.get_num_threads(),
              "trainable_parameters": sum(p.numel() for p in model.parameters())}
    sync()
    last = time.perf_counter()
    for index in batches(rows, args.batch_size, args.steps, args.group_by_length, args.seed):
        width = max(len(rows[k]) for k in index)
        ids = torch.full((len(index), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        for i, k in enumerate(index):
            n = len(rows[k])
            ids[i, :n] = torch.tensor(rows[k])
            mask[i, :n] = 1
            labels[i, prompt_lengths[k]:n] = ids[i, prompt_lengths[k]:n]
        ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            logits = model(input_ids=ids, attention_mask=mask).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        now = time.perf_counter()
        record["step_seconds"].append(now - last)
        record["step_rows"].append(len(index))
        record["step_tokens"].append(int(mask.sum()))
        last = now
    record.update(returncode=0, final_loss=float(loss.detach()), peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                  * 1024, cuda_max_memory_allocated=torch.cuda.max_memory_allocated() if device.type == "cuda" else None)
    with open(args.result, "w", encoding="utf-8") as handle:
        json.dump(record, handle)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
