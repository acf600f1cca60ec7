#!/usr/bin/env python
"""Run a Trainer-based program (one of our scripts, ``trl sft``'s CLI, ...) in this process with a probe on
``transformers.Trainer``, and write what it saw as JSON when the program ends:

    python bench/trainer_probe.py RESULT.json -- SCRIPT.py ARGS...     # a script file
    python bench/trainer_probe.py RESULT.json -m MODULE -- ARGS...     # a module (trl's CLI: -m trl.cli -- sft ...)

The probe adds a callback that takes the time at the end of every optimizer step (after a device
synchronisation on a GPU, so a step's time is its own work), and wraps ``Trainer.training_step`` to count what
each step trained on: rows, and tokens that are not padding (the attention mask's ones; every token of a
padding-free batch). Nothing else about the program changes. Peak memory: ``ru_maxrss`` of this process (CPU)
and ``torch.cuda.max_memory_allocated`` (GPU).
"""

from __future__ import annotations

import json
import os
import resource
import runpy
import sys
import time


def _count(inputs) -> tuple[int, int]:
    """(rows, non-padding tokens) of a training batch."""
    import torch

    tensors = {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor)}
    rows = next((v.shape[0] for v in tensors.values() if v.dim() > 0), 0)
    masks = [v for k, v in tensors.items() if k.endswith("attention_mask")]
    if masks:
        return rows, int(sum(int(m.sum()) for m in masks))
    ids = [v for k, v in tensors.items() if k.endswith("input_ids")]
    return rows, int(sum(v.numel() for v in ids))


def install(record: dict) -> None:
    import torch
    from transformers import Trainer, TrainerCallback

    pending = {"rows": 0, "tokens": 0}
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)

    class StepClock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            sync()
            record["last"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            sync()
            now = time.perf_counter()
            record["step_seconds"].append(now - record["last"])
            record["step_rows"].append(pending["rows"])
            record["step_tokens"].append(pending["tokens"])
            pending.update(rows=0, tokens=0)
            record["last"] = now

    original_init, original_step, original_train = Trainer.__init__, Trainer.training_step, Trainer.train

    def __init__(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.add_callback(StepClock())

    def training_step(self, model, inputs, *args, **kwargs):
        rows, tokens = _count(inputs)
        pending["rows"] += rows
        pending["tokens"] += tokens
        return original_step(self, model, inputs, *args, **kwargs)

    def train(self, *args, **kwargs):
        output = original_train(self, *args, **kwargs)
        record["train_metrics"] = dict(output.metrics)
        record["precision"] = "bf16" if self.args.bf16 else "fp16" if self.args.fp16 else "fp32"
        record["gradient_checkpointing"] = bool(self.args.gradient_checkpointing)
        record["batch_size"] = self.args.per_device_train_batch_size
        record["trainable_parameters"] = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        record["torch_threads"] = torch.get_num_threads()
        return output

    Trainer.__init__, Trainer.training_step, Trainer.train = __init__, training_step, train


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        raise SystemExit("usage: trainer_probe.py RESULT -- SCRIPT ARGS... | RESULT -m MODULE -- ARGS...")
    result_path, rest = argv[0], argv[1:]
    module = None
    if rest[0] == "-m":
        module, rest = rest[1], rest[2:]
    if rest[0] != "--":
        raise SystemExit("usage: trainer_probe.py RESULT -- SCRIPT ARGS... | RESULT -m MODULE -- ARGS...")
    rest = rest[1:]
    record = {"step_seconds": [], "step_rows": [], "step_tokens": []}
    install(record)
    code = 0
    started = time.perf_counter()
    try:
        if module:
            sys.argv = [module, *rest]
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        else:
            script = os.path.abspath(rest[0])
            sys.path.insert(0, os.path.dirname(script))
            sys.argv = [script, *rest[1:]]
            runpy.run_path(script, run_name="__main__")
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    finally:
        import torch

        record.pop("last", None)
        record.update(returncode=code, wall_seconds=time.perf_counter() - started,
                      peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      cuda_max_memory_allocated=torch.cuda.max_memory_allocated() if torch.cuda.is_available()
                      else None)
        with open(result_path, "w", encoding="utf-8") as handle:
            json.dump(record, handle)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
