#!/usr/bin/env python
"""The machine a benchmark ran on, and its measured peak matrix-product rate.

    python bench/machine.py --peak --device cpu --dtype bfloat16     # prints {"flops_per_second": ...}

The peak is the best of several square matrix products (sizes 1024-4096 on CPU, 4096-8192 on a GPU) in the given
dtype, timed after warm-up: what this device really sustains on the work MFU is measured against. It runs in
its own process, in the same benchmark run as the training it is compared with.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time


def describe(device: str) -> dict:
    cpu = None
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.lower().startswith("model name")),
                       None)
    except OSError:
        pass
    memory = None
    try:
        with open("/proc/meminfo", encoding="utf-8") as handle:
            memory = next((int(line.split()[1]) * 1024 for line in handle if line.startswith("MemTotal:")), None)
    except OSError:
        pass
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from rlhfkit.device import cpu_bf16_feature, usable_cpu_cores

    info = {"cpu_model": cpu or platform.processor() or None, "logical_cores": os.cpu_count(),
            "usable_cores": usable_cpu_cores(), "cpu_bf16": cpu_bf16_feature(), "memory_bytes": memory,
            "platform": platform.platform(), "python": platform.python_version()}
    if device == "cuda" and shutil.which("nvidia-smi"):
        done = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True)
        info["gpus"] = done.stdout.strip().splitlines() if done.returncode == 0 else None
    return info


def versions(python: str = sys.executable, env: dict | None = None) -> dict:
    """The package versions, torch's thread count and the GPU that ``python`` sees (under ``env``)."""
    code = ("import json\nfrom importlib.metadata import version, PackageNotFoundError\nout = {}\n"
            "for n in ('torch', 'transformers', 'accelerate', 'peft', 'datasets', 'trl'):\n"
            "    try: out[n] = version(n)\n    except PackageNotFoundError: out[n] = None\n"
            "import torch\nout['torch_threads'] = torch.get_num_threads()\n"
            "out['gpu'] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None\n"
            "print(json.dumps(out))\n")
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else {"error": done.stderr[-300:]}


def peak_matmul(device: str, dtype_name: str, quick: bool = False) -> dict:
    import torch

    dtype = getattr(torch, dtype_name)
    sizes = ([512] if quick else [1024, 2048, 4096]) if device == "cpu" else ([2048] if quick else [4096, 8192])
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    best = {"flops_per_second": 0.0}
    for n in sizes:
        a = torch.randn(n, n, dtype=dtype, device=device)
        b = torch.randn(n, n, dtype=dtype, device=device)
        for _ in range(2 if device == "cpu" else 5):
            a @ b
        sync()
        reps = 3 if device == "cpu" else 20
        times = []
        for _ in range(reps):
            started = time.perf_counter()
            a @ b
            sync()
            times.append(time.perf_counter() - started)
        rate = 2 * n**3 / min(times)
        if rate > best["flops_per_second"]:
            best = {"flops_per_second": rate, "size": n, "dtype": dtype_name, "device": device,
                    "threads": torch.get_num_threads()}
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peak", action="store_true", help="measure the peak matrix-product rate")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    print(json.dumps(peak_matmul(args.device, args.dtype, args.quick) if args.peak else describe(args.device)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
