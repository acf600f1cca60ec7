"""rlhfkit.faults in isolation: stop requests, bad batches, the output-folder policy and the disk check.

The same machinery inside the real scripts (SIGTERM mid-training, NaN injection, a read-only output folder) is
exercised end to end in ``test_fault_runs.py``.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

from rlhfkit import faults
from rlhfkit.errors import RunStopped, UserError


def test_first_signal_asks_to_stop_and_the_second_stops_at_once():
    stop = faults.StopRequest().install()
    try:
        assert not stop.requested()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested() and stop.exit_code() == 143 and stop.name() == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
    finally:
        stop.uninstall()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_sigint_gives_exit_code_130():
    stop = faults.StopRequest().install()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested() and stop.exit_code() == 130
    finally:
        stop.uninstall()


def _params(*grads):
    params = []
    for grad in grads:
        p = torch.nn.Parameter(torch.zeros(3))
        p.grad = None if grad is None else torch.tensor(grad)
        params.append(p)
    return params


def test_gradients_finite_sees_one_nan_or_inf_anywhere():
    assert faults.gradients_finite(_params([1.0, 2.0, 3.0], None))
    assert not faults.gradients_finite(_params([1.0, 2.0, 3.0], [0.0, float("nan"), 0.0]))
    assert not faults.gradients_finite(_params([float("inf"), 0.0, 0.0]))
    assert faults.gradients_finite(_params(None))


def test_bad_batches_are_skipped_up_to_the_limit_then_stop():
    bad = faults.BadBatches(limit=1)
    good = _params([1.0, 1.0, 1.0])
    assert not bad.check(good, 1) and good[0].grad is not None
    first = _params([float("nan"), 1.0, 1.0], [1.0, 1.0, 1.0])
    assert not bad.check(first, 2)  # skipped: every gradient dropped, so the optimizer step changes nothing
    assert all(p.grad is None for p in first)
    optimizer = torch.optim.AdamW(first, lr=1.0)
    optimizer.step()
    assert all(torch.equal(p.detach(), torch.zeros(3)) for p in first)
    assert bad.check(_params([float("inf"), 0.0, 0.0]), 3) and bad.stopped_at == 3
    error = faults.diverged(bad, "/x/checkpoint-2")
    assert isinstance(error, RunStopped) and error.exit_code == 1
    assert "step 3" in str(error) and "--resume_from_checkpoint /x/checkpoint-2" in str(error)
    assert "no checkpoint" in str(faults.diverged(bad, None))


def test_stopped_by_signal_says_how_to_resume():
    stop = faults.StopRequest()
    stop.signum = signal.SIGTERM
    error = faults.stopped_by_signal(stop, 7, "out/checkpoint-7")
    assert error.exit_code == 143 and error.prefix == "stopped"
    assert "after step 7" in str(error) and "out/checkpoint-7" in str(error)
    assert "--resume_from_checkpoint last" in str(error)


def test_output_folder_policy(tmp_path):
    faults.check_output_dir(str(tmp_path / "new" / "deeper"), overwrite=False, resuming=False)  # fine: created later
    (tmp_path / "hidden").mkdir()
    (tmp_path / "hidden" / ".stage_done").write_text("x")
    faults.check_output_dir(str(tmp_path / "hidden"), overwrite=False, resuming=False)  # hidden files only
    full = tmp_path / "full"
    full.mkdir()
    (full / "model.safetensors").write_text("x")
    with pytest.raises(UserError, match="is not empty: pass --overwrite_output_dir"):
        faults.check_output_dir(str(full), overwrite=False, resuming=False)
    faults.check_output_dir(str(full), overwrite=True, resuming=False)
    faults.check_output_dir(str(full), overwrite=False, resuming=True)
    assert (full / "model.safetensors").exists()  # never deleted
    with pytest.raises(UserError, match="is a file"):
        faults.check_output_dir(str(full / "model.safetensors"), overwrite=True, resuming=False)
    with pytest.raises(UserError, match="cannot create --output_dir"):
        faults.check_output_dir(str(full / "model.safetensors" / "out"), overwrite=True, resuming=False)


def test_unwritable_place_is_refused():
    if os.access("/proc/sys", os.W_OK):
        pytest.skip("/proc/sys is writable here: no read-only place to test with")
    with pytest.raises(UserError, match="not writable"):
        faults.check_output_dir("/proc/sys/rlhfkit-out", overwrite=False, resuming=False)


def test_disk_space_check(tmp_path):
    faults.check_disk_space(str(tmp_path / "out"), 1024)
    with pytest.raises(UserError, match="not enough disk space"):
        faults.check_disk_space(str(tmp_path / "out"), 2**62)
    model = torch.nn.Linear(10, 10)  # 110 float32 parameters, all trainable
    assert faults.needed_bytes(model) == 110 * 4 + 110 * 4 * 3
    model.requires_grad_(False)
    assert faults.needed_bytes(model) == 110 * 4


def test_a_full_disk_while_writing_is_one_line(tmp_path, capsys):
    import errno

    from rlhfkit.errors import cli_entry
    from rlhfkit.io import staging_dir

    out = tmp_path / "out"

    @cli_entry
    def save():
        with staging_dir(str(out)) as staging:
            (Path(staging) / "model.safetensors").write_text("half")
            raise OSError(errno.ENOSPC, "No space left on device", str(Path(staging) / "model.safetensors"))

    with pytest.raises(SystemExit) as stopped:
        save()
    assert stopped.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the disk is full") and "Traceback" not in err and len(err.splitlines()) == 1
    assert not out.exists() and not list(tmp_path.iterdir())  # nothing published, the staging folder removed
