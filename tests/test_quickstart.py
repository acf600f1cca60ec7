"""The README's Quickstart, run as written (its one bash block, on the files in ../shared/fixtures), and the
pipeline's ``quick`` profile that runs the same chain on a user's model and data in one command."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FIXTURES, REPO

pytestmark = pytest.mark.slow


def quickstart_block() -> str:
    """The first bash block under the README's Quickstart heading."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Quickstart"):]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1)


def _env(**extra) -> dict:
    # `python` in the README is the project's interpreter (make install's .venv, or the one running the tests)
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, "PYTHONUNBUFFERED": "1", **extra}


def test_the_readme_quickstart_runs_as_written(tmp_path):
    if not FIXTURES.is_dir():
        pytest.skip(f"{FIXTURES} is absent: the Quickstart runs on ../shared/fixtures")
    out = tmp_path / "quickstart"
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", quickstart_block()], cwd=REPO,
                            env=_env(OUT=str(out)), capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stderr[-5000:]
    for stage in ("sft", "rm", "ppo"):
        assert json.loads((out / stage / "all_results.json").read_text())["train_runtime"] > 0, stage
    for merged in ("sft_merged", "rm_merged"):
        assert (out / merged / "config.json").is_file() and (out / merged / "model.safetensors").is_file()
    summary = json.loads((out / "comparison" / "comparison.json").read_text())
    assert set(summary["models"]) == {"base", "sft", "finetuned"}
    assert summary["models"]["finetuned"]["reward"]["mean"] is not None
    assert (out / "comparison" / "comparison.png").stat().st_size > 10_000


def test_the_quick_profile_runs_your_model_and_data(tmp_path):
    if not FIXTURES.is_dir():
        pytest.skip(f"{FIXTURES} is absent: the quick profile runs on ../shared/fixtures here")
    work = tmp_path / "work"
    model = FIXTURES / "models" / "stories260K"
    data = FIXTURES / "data" / "hh-rlhf-harmless-base-test-first1500.jsonl.gz"
    result = subprocess.run(
        ["bash", str(REPO / "ppo_pipeline_sanity.sh"), "--profile", "quick", "--model", str(model), "--dataset",
         str(data), "--workdir", str(work), "--sft-steps", "10", "--rm-pairs", "64", "--max-length", "128",
         "--ppo-steps", "2", "--num-samples", "8"],
        cwd=REPO, env=_env(LOG=str(tmp_path / "log")), capture_output=True, text=True, timeout=1500)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-5000:]
    assert "profile quick" in log and "(no pass/fail check on the quick profile)" in log
    assert "training pairs: 64," in log  # --rm-pairs reached the reward model
    assert "--max_length 128" in log and "--steps 2" in log and "--max_steps 10" in log
    assert (work / "comparison" / "comparison.json").is_file()


def test_the_quick_profile_needs_a_model_and_data(tmp_path):
    result = subprocess.run(["bash", str(REPO / "ppo_pipeline_sanity.sh"), "--profile", "quick"], cwd=REPO,
                            env=_env(WORKDIR=str(tmp_path / "w"), LOG=str(tmp_path / "log")), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and "give --model and --dataset" in result.stderr
    assert not (tmp_path / "w").exists()
