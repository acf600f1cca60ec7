"""Faults in real runs of the training scripts: SIGTERM mid-training, a loss that turns NaN, and what is kept.

* SIGTERM (sft, reward_modeling, dpo, grpo, ppo): the step finishes, a complete checkpoint is saved, the run exits
  with 143 and one line saying how to resume, no final model is written; the rerun with
  ``--resume_from_checkpoint last`` finishes at the planned step count.
* NaN injection: the SFT model's activations turn NaN on one training step (a forward hook): the run stops naming
  that step, keeps the earlier checkpoint and writes no final model; with ``--max_bad_batches 1`` the batch
  is skipped and the run finishes. PPO gets NaN scores from a rule reward and stops the same way.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, load_script

pytestmark = pytest.mark.slow  # every test here trains a model or runs a script

QUIET = ["--disable_tqdm", "True", "--report_to", "none", "--save_strategy", "no"]
TRAINER_RUNS = {
    "sft.py": ["--max_steps", "40", "--per_device_train_batch_size", "4", "--logging_steps", "1", "--max_train_samples",
               "400"],
    "reward_modeling.py": ["--max_steps", "40", "--per_device_train_batch_size", "4", "--logging_steps", "1",
                           "--train_subset", "400", "--eval_subset", "16"],
    "dpo.py": ["--max_steps", "40", "--per_device_train_batch_size", "4", "--logging_steps", "1", "--train_subset",
               "400", "--eval_subset", "16"],
    "grpo.py": ["--max_steps", "40", "--per_device_train_batch_size", "4", "--num_generations", "4",
                "--max_completion_length", "12", "--logging_steps", "1", "--reward_function", "toy"],
}
PPO_RUN = ["--reward_function", "toy", "--steps", "40", "--batch_size", "4", "--mini_batch_size", "2",
           "--output_max_length", "12", "--logging_steps", "1", "--report_to", "none"]
TOKEN = "hf_rlhfkitTestSecret0123456789"  # a fake HF_TOKEN: must never reach a log or an output file
STARTED = {"sft.py": "'loss'", "reward_modeling.py": "'loss'", "dpo.py": "'loss'", "grpo.py": "'loss'",
           "ppo.py": "episodes/s | ETA"}


def _start(script: str, args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / script), *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**__import__("os").environ,
                                                                      "PYTHONUNBUFFERED": "1", "HF_TOKEN": TOKEN,
                                                                      "OMP_NUM_THREADS": "1"})


def _wait_for(process: subprocess.Popen, marker: str, timeout: float = 300) -> list[str]:
    lines, deadline = [], time.monotonic() + timeout
    for line in process.stdout:
        lines.append(line)
        if marker in line or time.monotonic() > deadline:
            break
    return lines


@pytest.mark.parametrize("script", ["sft.py", "reward_modeling.py", "dpo.py", "grpo.py", "ppo.py"])
def test_sigterm_saves_a_checkpoint_and_the_rerun_resumes_to_the_end(script, embedded_root, tmp_path):
    out = tmp_path / "out"
    args = ["--output_dir", str(out), *(PPO_RUN if script == "ppo.py" else [*TRAINER_RUNS[script], *QUIET])]
    process = _start(script, args)
    seen = _wait_for(process, STARTED[script])
    assert process.poll() is None, "".join(seen)
    process.send_signal(signal.SIGTERM)
    rest, _ = process.communicate(timeout=300)
    output = "".join(seen) + rest
    assert process.returncode == 143, output[-3000:]
    last = output.strip().splitlines()[-1]
    assert last.startswith("stopped: stopped by SIGTERM after step ") and "--resume_from_checkpoint last" in last
    step = int(last.split("after step ")[1].split(":")[0])
    assert 1 <= step < 40, last
    checkpoint = out / f"checkpoint-{step}"
    assert str(checkpoint) in last and checkpoint.is_dir()
    assert (checkpoint / ("ppo_state.json" if script == "ppo.py" else "trainer_state.json")).is_file()
    assert "Traceback" not in output
    for final in ("adapter_model.safetensors", "model.safetensors", "all_results.json"):
        assert not (out / final).exists(), final  # a stopped run leaves no final model that looks complete

    resumed = subprocess.run([sys.executable, str(REPO / script), *args, "--resume_from_checkpoint", "last"],
                             cwd=REPO, capture_output=True, text=True, timeout=600,
                             env={**__import__("os").environ, "HF_TOKEN": TOKEN})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert TOKEN not in output + resumed.stdout + resumed.stderr
    assert not [p for p in out.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]
    results = json.loads((out / "all_results.json").read_text())
    if script == "ppo.py":
        assert results["train_steps"] == 40 and f"resumed from {checkpoint} at step {step}" in resumed.stderr
    else:
        assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 40
    if script == "sft.py":  # stopped at a step the timing chose, then resumed: the same model as one straight run
        import torch
        from safetensors.torch import load_file

        straight = tmp_path / "straight"
        args = ["--output_dir", str(straight), *TRAINER_RUNS[script], *QUIET]
        result = subprocess.run([sys.executable, str(REPO / script), *args], cwd=REPO, capture_output=True,
                                text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        resumed_weights = load_file(str(out / "adapter_model.safetensors"))
        straight_weights = load_file(str(straight / "adapter_model.safetensors"))
        assert resumed_weights.keys() == straight_weights.keys()
        for name, tensor in straight_weights.items():
            torch.testing.assert_close(resumed_weights[name], tensor, rtol=1e-4, atol=1e-5, msg=name)


def _poisoned_sft(monkeypatch, nan_on_call: int):
    """sft.py's module, its model made NaN on training forward call ``nan_on_call`` (1-based) from the embeddings on."""
    import torch

    from rlhfkit import models

    script = load_script("sft.py")
    real_load = models.load_causal_lm
    calls = {"n": 0}

    def load(*args, **kwargs):
        model = real_load(*args, **kwargs)

        def hook(module, inputs, output):
            if module.training:
                calls["n"] += 1
                if calls["n"] == nan_on_call:
                    return output * torch.tensor(float("nan"))
            return output

        model.get_input_embeddings().register_forward_hook(hook)
        return model

    monkeypatch.setattr(models, "load_causal_lm", load)
    return script


SFT_NAN = ["--max_steps", "6", "--per_device_train_batch_size", "4", "--max_train_samples", "200", "--save_strategy",
           "steps", "--save_steps", "2", "--logging_steps", "1", "--disable_tqdm", "True", "--report_to", "none"]


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(monkeypatch, embedded_root, tmp_path,
                                                                           capsys):
    script = _poisoned_sft(monkeypatch, nan_on_call=3)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stopped:
        script.cli(["--output_dir", str(out), *SFT_NAN])
    assert stopped.value.code == 1
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith("error: the loss became NaN or infinite at step 3"), message
    assert f"the last good checkpoint is {out / 'checkpoint-2'}" in message
    assert (out / "checkpoint-2" / "trainer_state.json").is_file() and not (out / "checkpoint-4").exists()
    assert not (out / "adapter_model.safetensors").exists()


def test_nan_batch_is_skipped_with_max_bad_batches(monkeypatch, embedded_root, tmp_path, capsys):
    import torch
    from safetensors.torch import load_file

    script = _poisoned_sft(monkeypatch, nan_on_call=3)
    out = tmp_path / "out"
    results = script.cli(["--output_dir", str(out), *SFT_NAN, "--max_bad_batches", "1"])
    assert "step 3: the loss is NaN or infinite: batch skipped (1 of --max_bad_batches 1)" in capsys.readouterr().err
    assert results["train_loss"] == results["train_loss"]  # finite, not NaN
    weights = load_file(str(out / "adapter_model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_ppo_nan_scores_stop_the_run_at_that_step(embedded_root, tmp_path):
    rule = tmp_path / "nan_reward.py"
    rule.write_text("calls = 0\n\ndef score(prompt, response):\n    global calls\n    calls += 1\n"
                    "    return float('nan') if calls > 12 else 1.0\n")  # steps 1-3 of 4 episodes are fine
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, str(REPO / "ppo.py"), "--output_dir", str(out), *PPO_RUN[2:],
                             "--reward_function", f"{rule}:score", "--save_steps", "2"],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the loss became NaN or infinite at step 4"), last
    assert f"the last good checkpoint is {out / 'checkpoint-2'}" in last
    assert "Traceback" not in result.stderr and not (out / "config.json").exists()


def test_a_read_only_output_folder_is_refused_before_any_work(tmp_path):
    import os

    from conftest import assert_user_error, run_script

    if os.access("/proc/sys", os.W_OK):
        pytest.skip("/proc/sys is writable here: no read-only place to test with")
    for script in ("sft.py", "reward_modeling.py", "dpo.py", "ppo.py"):
        extra = ["--reward_function", "toy"] if script == "ppo.py" else []
        result = run_script(str(REPO / script), "--output_dir", "/proc/sys/rlhfkit-out", *extra)
        assert_user_error(result, "cannot write to --output_dir /proc/sys/rlhfkit-out")
        assert "Loading" not in result.stderr  # refused before any model was loaded
    assert not Path("/proc/sys/rlhfkit-out").exists()


def test_trainer_checkpoints_appear_whole_or_not_at_all(monkeypatch, embedded_root, tmp_path):
    """Checkpoints are renamed into place complete, and rotated; a save that fails leaves no checkpoint-N."""
    from transformers import Trainer

    script = load_script("sft.py")
    out = tmp_path / "out"
    args = ["--max_steps", "6", "--per_device_train_batch_size", "4", "--max_train_samples", "200",
            "--save_strategy", "steps", "--save_steps", "2", "--save_total_limit", "2", "--disable_tqdm", "True",
            "--report_to", "none"]
    script.cli(["--output_dir", str(out), *args])
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(("checkpoint-", ".checkpoint"))) == [
        "checkpoint-4", "checkpoint-6"]
    assert all((out / c / "trainer_state.json").is_file() for c in ("checkpoint-4", "checkpoint-6"))

    real = Trainer._save_rng_state

    def fail_at_step_4(self, output_dir):
        if self.state.global_step == 4:
            raise OSError(5, "Input/output error (injected)")
        return real(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_rng_state", fail_at_step_4)
    broken = tmp_path / "broken"
    with pytest.raises(OSError, match="injected"):
        script.cli(["--output_dir", str(broken), *args])
    left = sorted(p.name for p in broken.iterdir() if "checkpoint" in p.name)
    assert left == ["checkpoint-2"]  # no checkpoint-4, and no staging folder
