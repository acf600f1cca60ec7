"""Result files every script writes: ``<split>_results.json`` and ``all_results.json`` (transformers'
names), atomically, plus the throughput figures the Trainer does not compute itself."""

from __future__ import annotations

import os

from rlhfkit.io import write_json


def tokens_per_second(log_history: list[dict], runtime: float | None) -> dict:
    """Trained tokens and tokens/s from TRL's cumulative ``num_tokens`` log (non-padding tokens)."""
    counts = [entry["num_tokens"] for entry in log_history if "num_tokens" in entry]
    if not counts or not runtime:
        return {}
    tokens = float(counts[-1])
    return {"train_tokens": tokens, "train_tokens_per_second": tokens / runtime}


def peak_memory_per_process() -> dict:
    """This run's peak memory, one entry per process (rank order), in MiB: ``peak_rss_mib_per_process`` (the
    process's resident set, what a CPU run holds) and, on CUDA, ``peak_memory_mib_per_process`` (torch's
    ``max_memory_allocated``). A collective under several processes: every process must call it."""
    import resource

    import torch

    local = {"peak_rss_mib_per_process": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # KiB on Linux
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        local["peak_memory_mib_per_process"] = torch.cuda.max_memory_allocated() / 2**20
    import torch.distributed as dist

    gathered = [local]
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, local)
    return {key: [round(entry[key], 1) for entry in gathered] for key in local}


def write_results(output_dir: str, split: str, metrics: dict) -> str:
    """Write ``{split}_results.json`` in ``output_dir`` (merging into an existing ``all_results.json``); under
    several processes only the main one writes."""
    import json

    from rlhfkit.cli import is_main_process

    path = os.path.join(output_dir, f"{split}_results.json")
    if not is_main_process():
        return path
    payload = dict(metrics)
    if split == "all" and os.path.isfile(path):
        with open(path, encoding="utf-8") as handle:
            payload = {**json.load(handle), **payload}
    write_json(path, payload)
    return path
