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

# `make test` spreads whole modules over one pytest-xdist worker per core (`-n auto --dist loadfile`: a module's
# training fixture runs once). Each worker, and every script it starts, then gets its share of the cores instead of
# all of them, so that workers do not oversubscribe the machine; a test that sets its own OMP_NUM_THREADS keeps it.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // WORKERS)))


# Fixtures that build the embedded default or train and run scripts for a whole module: a test that uses one
# (directly or through another fixture) is marked slow, so `make test-fast` never pays for them.
E2E_FIXTURES = {"embedded_root", "shared_runs", "runs", "world", "adapters", "merges", "pipeline", "toy",
                "held_out_scores", "stories", "stories_reward_model", "lora_run", "full_run", "flag_and_config_runs",
                "refused_runs", "adapter_dir"}


def pytest_collection_modifyitems(config, items):
    slow_modules = set()
    for item in items:
        if E2E_FIXTURES & set(getattr(item, "fixturenames", ())) or item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)
            slow_modules.add(item.module.__name__)
    # modules with slow tests first (a stable sort keeps the order within a module): under xdist the long ones start
    # at once instead of one of them starting last while the other workers sit idle
    items.sort(key=lambda item: item.module.__name__ not in slow_modules)


def fixture_path(*parts: str) -> Path:
    """A file under ../shared/fixtures, or skip the test (a user's clone has no ../shared)."""
    path = FIXTURES.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real fixture {path} is absent (../shared/fixtures comes with the project's CI, not a clone)")
    return path


@pytest.fixture(scope="session", autouse=True)
def embedded_cache(tmp_path_factory):
    """A private RLHFKIT_CACHE for the whole run, so tests never touch ~/.cache and start from a known build.

    ``RLHFKIT_TEST_CACHE=DIR`` uses DIR instead: `make test` gives its two parts one fresh folder (removed after),
    and while developing it reuses a cache across runs.
    """
    reuse = os.environ.get("RLHFKIT_TEST_CACHE")
    if reuse:
        cache = Path(reuse)
    elif WORKERS > 1:  # one cache for all xdist workers: their common parent folder is this run's
        cache = tmp_path_factory.getbasetemp().parent / "rlhfkit-cache"
        cache.mkdir(exist_ok=True)
    else:
        cache = tmp_path_factory.mktemp("rlhfkit-cache")
    os.environ["RLHFKIT_CACHE"] = str(cache)
    yield cache


@pytest.fixture(scope="session")
def embedded_root(embedded_cache):
    """Root of the embedded default (model/, data/), built once per test run (the first xdist worker to get here
    builds it, the others wait on the lock)."""
    from filelock import FileLock

    from rlhfkit import embedded

    with FileLock(f"{embedded_cache}.lock"):
        if embedded.is_built(embedded.default_dir(0)):
            return Path(embedded.ensure())
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(os.cpu_count() or 1)  # workers that need the build wait for it: it takes every core
        try:
            return Path(embedded.ensure())
        finally:
            torch.set_num_threads(threads)


# Runs that several modules train on, made once per test run (`shared_runs`): name -> the commands, in order, each a
# repo script and its flags; "{dir}" is the run's folder. The toy task's SFT model (LoRA, merged), which PPO and DPO
# start from, and its reward model (full fine-tuning), which PPO trains against and test_reward_modeling checks.
QUIET_RUN = ["--save_strategy", "no", "--disable_tqdm", "True"]
SHARED_RUNS = {
    "toy-sft": [
        ["sft.py", "--output_dir", "{dir}/sft", "--do_train", "--max_steps", "300", "--per_device_train_batch_size",
         "16", "--learning_rate", "2e-3", "--lora_target_modules", "q_proj", "k_proj", "v_proj", "o_proj", "--bf16",
         "False", *QUIET_RUN],
        ["merge_peft_adapter.py", "--adapter_model_name", "{dir}/sft", "--output_name", "{dir}/sft-merged"],
    ],
    "toy-rm": [
        ["reward_modeling.py", "--output_dir", "{dir}/rm", "--per_device_train_batch_size", "32",
         "--num_train_epochs", "2", "--learning_rate", "1e-3", "--use_peft", "False", *QUIET_RUN],
    ],
}


@pytest.fixture(scope="session")
def shared_runs(embedded_root, tmp_path_factory):
    """``get(name) -> (folder, [CompletedProcess, ...])`` for a run of SHARED_RUNS, made on first use (one thread
    per script, so that two can run side by side) and kept for the rest of the test run. Under xdist the workers
    share them: the first to ask runs the commands, the others wait on its lock and read what it recorded. The
    commands stop at the first failure; the tests that use a run assert on each result."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp().parent if WORKERS > 1 else tmp_path_factory.mktemp("shared")
    root = root / "shared-runs"
    root.mkdir(exist_ok=True)

    def get(name: str) -> tuple[Path, list[subprocess.CompletedProcess]]:
        folder, record = root / name, root / f"{name}.json"
        with FileLock(f"{folder}.lock"):
            if not record.exists():
                folder.mkdir(exist_ok=True)
                done = []
                for script, *args in SHARED_RUNS[name]:
                    result = run_script(str(REPO / script), *(a.format(dir=folder) for a in args),
                                        env={"OMP_NUM_THREADS": "1"})
                    done.append({"args": result.args, "returncode": result.returncode, "stdout": result.stdout,
                                 "stderr": result.stderr})
                    if result.returncode != 0:
                        break
                aside = record.with_suffix(".tmp")
                aside.write_text(json.dumps(done), encoding="utf-8")
                aside.replace(record)
            return folder, [subprocess.CompletedProcess(**run) for run in json.loads(record.read_text("utf-8"))]

    return get


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


_loaded_scripts: dict[str, object] = {}


def load_script(filename: str):
    """A top-level script (``"grpo.py"``) imported in-process, once per test process, under a name of its own."""
    if filename not in _loaded_scripts:
        import importlib.util

        spec = importlib.util.spec_from_file_location(f"script_under_test_{filename[:-3]}", REPO / filename)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
        spec.loader.exec_module(module)
        _loaded_scripts[filename] = module
    return _loaded_scripts[filename]


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
