"""Shared test setup: offline hub, a private cache for the embedded default, paths to the real fixtures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures"
STUBS = Path(__file__).resolve().parent / "stubs"

# No test may reach the model hub; offline mode makes a hub id fail at once instead of timing out.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


# Fixtures that build the embedded default or train and run scripts for a whole module: a test that uses one
# (directly or through another fixture) is marked slow, so `make test-fast` never pays for them.
E2E_FIXTURES = {"embedded_root", "runs", "world", "adapters", "merges", "pipeline", "toy", "held_out_scores",
                "stories", "stories_reward_model", "lora_run", "full_run", "flag_and_config_runs", "refused_runs",
                "adapter_dir"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if E2E_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def fixture_path(*parts: str) -> Path:
    """A file under ../shared/fixtures, or skip the test (a user's clone has no ../shared)."""
    path = FIXTURES.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real fixture {path} is absent (../shared/fixtures comes with the project's CI, not a clone)")
    return path


@pytest.fixture(scope="session", autouse=True)
def embedded_cache(tmp_path_factory):
    """A private RLHFKIT_CACHE for the whole run, so tests never touch ~/.cache and start from a known build.

    ``RLHFKIT_TEST_CACHE=DIR`` reuses a cache across runs while developing (CI never sets it).
    """
    reuse = os.environ.get("RLHFKIT_TEST_CACHE")
    cache = Path(reuse) if reuse else tmp_path_factory.mktemp("rlhfkit-cache")
    os.environ["RLHFKIT_CACHE"] = str(cache)
    yield cache


@pytest.fixture(scope="session")
def embedded_root(embedded_cache):
    """Root of the embedded default (model/, data/), built once per test session."""
    from rlhfkit import embedded

    return Path(embedded.ensure())


@pytest.fixture(scope="session")
def reward_model(embedded_root, tmp_path_factory):
    """A sequence classifier on the embedded model with a seeded random score head (a fixed reward), saved with its
    tokenizer. A test module may define its own ``reward_model`` instead."""
    import torch

    from rlhfkit import models

    folder = tmp_path_factory.mktemp("reward") / "rm"
    torch.manual_seed(0)
    tokenizer = models.load_tokenizer(str(embedded_root / "model"))
    model = models.load_sequence_classifier(str(embedded_root / "model"), pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return str(folder)


def run_script(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: int = 1800):
    """Run a repo script or module (``-m name``) in a fresh interpreter; returns CompletedProcess."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    cmd = [sys.executable, *args]
    return subprocess.run(cmd, cwd=cwd or REPO, env=full_env, capture_output=True, text=True, timeout=timeout)


def assert_ok(result) -> None:
    """A run that succeeded: exit code 0 (else its exit code, stdout and stderr)."""
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def assert_user_error(result, *fragments: str) -> None:
    """A refused run: exit code 2, one 'error: ...' line naming the problem, and no traceback."""
    assert result.returncode == 2, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], f"{fragment!r} not in {errors[0]!r}"
