"""`make hpu-check`: the Gaudi dependency set (requirements-hpu.txt) in its own virtual environment.

Run with that environment's Python after `pip install -r requirements-hpu.txt` (with the CPU torch standing in
for Habana's build, which only the Gaudi image has). It checks, and exits non-zero on the first failure:

1. every pin of requirements-hpu.txt is what got installed;
2. every installed package accepts the image's torch (the Dockerfile's PYTORCH_VERSION) and Python (3.12 on
   the image's Ubuntu 24.04), read from the packages' own metadata, so the set installs on the image too;
3. every script imports, and answers --help;
4. SFT and PPO each run two steps on the HPU path against the stand-in Gaudi runtime (tests/stubs), so the
   pinned versions work together, not just import.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.name for p in REPO.glob("*.py"))  # every script at the top, as the Dockerfile's build checks them
IMAGE_PYTHON = "3.12"  # Ubuntu 24.04's Python, in Habana's ubuntu24.04 images


def fail(message: str) -> None:
    print(f"hpu-check: FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def dockerfile_arg(name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S+)", (REPO / "Dockerfile").read_text(), re.M)
    if not match:
        fail(f"the Dockerfile has no ARG {name}")
    return match.group(1)


def check_pins() -> list[str]:
    pins = [line.split("#")[0].strip() for line in (REPO / "requirements-hpu.txt").read_text().splitlines()]
    pins = [p for p in pins if p]
    for pin in pins:
        requirement = Requirement(pin)
        installed = importlib.metadata.version(requirement.name)
        if not requirement.specifier.contains(installed):
            fail(f"requirements-hpu.txt pins {pin} but {installed} is installed")
    print(f"hpu-check: {len(pins)} pins installed as written")
    return pins


def check_image_bounds(torch_version: str) -> None:
    environment = {"python_version": IMAGE_PYTHON, "python_full_version": IMAGE_PYTHON + ".0", "extra": ""}
    checked = 0
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name.lower().startswith(("torch", "nvidia-", "triton")):
            continue  # the stand-in torch and its own dependencies: the image brings its own
        python = dist.metadata.get("Requires-Python")
        if python and not Requirement(f"x{python}").specifier.contains(IMAGE_PYTHON + ".0"):
            fail(f"{name} {dist.version} requires Python {python}; the Gaudi image has {IMAGE_PYTHON}")
        for line in dist.requires or []:
            requirement = Requirement(line)
            if requirement.name.lower() != "torch":
                continue
            if requirement.marker is not None and not requirement.marker.evaluate(environment):
                continue
            if not requirement.specifier.contains(torch_version, prereleases=True):
                fail(f"{name} {dist.version} requires {line}; the Gaudi image ships torch {torch_version}")
        checked += 1
    print(f"hpu-check: {checked} packages accept torch {torch_version} and Python {IMAGE_PYTHON}")


def check_scripts() -> None:
    sys.path.insert(0, str(REPO))  # as `python <script>` has it
    for script in SCRIPTS:
        spec = importlib.util.spec_from_file_location(script[:-3], REPO / script)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)  # module level only: main() runs under __name__ == "__main__"
        started = time.perf_counter()
        result = subprocess.run([sys.executable, script, "--help"], cwd=REPO, capture_output=True, text=True,
                                timeout=300)
        if result.returncode != 0 or "usage:" not in result.stdout:
            fail(f"{script} --help exited {result.returncode}:\n{result.stderr[-2000:]}")
        print(f"hpu-check: {script}: imports, --help in {time.perf_counter() - started:.1f}s")


def standin_run(script: str, args: list[str], work: Path) -> list[dict]:
    log = work / f"{script}.jsonl"
    env = {k: v for k, v in os.environ.items() if k != "PT_HPU_LAZY_MODE"}
    env.update(PYTHONPATH=str(REPO / "tests" / "stubs"), HABANA_STANDIN_LOG=str(log), HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", RLHFKIT_CACHE=str(work / "cache"), TOKENIZERS_PARALLELISM="false")
    result = subprocess.run([sys.executable, script, "--use_habana", "--use_lazy_mode", "--output_dir",
                             str(work / script), *args], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=900)
    if result.returncode != 0:
        fail(f"{script} on the stand-in Gaudi exited {result.returncode}:\n{result.stderr[-3000:]}")
    records = [json.loads(line) for line in log.read_text().splitlines()]
    flushes = [r for r in records if r["event"] == "mark_step"]
    if records[0].get("lazy_mode") != "1" or not flushes:
        fail(f"{script} on the stand-in Gaudi: lazy mode {records[0]}, {len(flushes)} mark_step calls")
    print(f"hpu-check: {script} on the stand-in Gaudi: lazy mode set before import, {len(flushes)} mark_step calls")
    return records


def main() -> None:
    import torch

    torch_version = dockerfile_arg("PYTORCH_VERSION")
    print(f"hpu-check: Python {sys.version.split()[0]}, torch {torch.__version__} standing in for the image's "
          f"{torch_version} (Gaudi software {dockerfile_arg('GAUDI_VERSION')})")
    check_pins()
    check_image_bounds(torch_version)
    check_scripts()
    with tempfile.TemporaryDirectory(prefix="hpu-check-") as folder:
        work = Path(folder)
        standin_run("sft.py", ["--max_steps", "2", "--per_device_train_batch_size", "4", "--pad_max", "--max_length",
                               "64", "--max_train_samples", "16", "--bf16", "False", "--report_to", "none"], work)
        standin_run("ppo.py", ["--reward_function", "toy", "--steps", "2", "--batch_size", "4", "--mini_batch_size",
                               "2", "--ppo_epochs", "1", "--output_max_length", "8", "--input_max_length", "48", "--pad_max", "--use_hpu_graphs",
                               "--bf16", "False", "--report_to", "none"], work)
    print("hpu-check: ok")


if __name__ == "__main__":
    main()
