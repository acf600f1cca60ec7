"""The device switch: --device auto|cpu|cuda|hpu, the Gaudi flags, precision, mark_step.

The HPU branch runs against a stand-in for ``habana_frameworks`` (tests/stubs), put on ``sys.path`` per test.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

import pytest
import torch
from conftest import STUBS

from rlhfkit import device
from rlhfkit.device import DeviceArguments, DeviceInfo, configure_training_args, resolve_device, resolve_precision
from rlhfkit.errors import UserError

LAZY = device.LAZY_MODE_ENV


def _habana_modules() -> list[str]:
    return [name for name in sys.modules if name == "habana_frameworks" or name.startswith("habana_frameworks.")]


def _drop_habana_modules() -> None:
    for name in _habana_modules():
        del sys.modules[name]


def _unset_lazy_env(monkeypatch) -> None:
    """Remove PT_HPU_LAZY_MODE for this test, and have whatever the code sets undone afterwards.

    (``delenv`` alone records nothing when the variable is absent, so a value set by the code would leak.)
    """
    monkeypatch.setenv(LAZY, "placeholder")
    monkeypatch.delenv(LAZY)


@pytest.fixture
def no_habana(monkeypatch):
    """The real machine's view: no habana_frameworks installed (skip if one really is)."""
    if device.habana_installed():
        pytest.skip("habana_frameworks is really installed here")
    _unset_lazy_env(monkeypatch)


@pytest.fixture
def habana_stub(monkeypatch):
    """The stand-in habana_frameworks importable, freshly imported by each test, and forgotten afterwards."""
    _drop_habana_modules()
    _unset_lazy_env(monkeypatch)
    monkeypatch.syspath_prepend(str(STUBS))
    monkeypatch.setattr(device, "_hpu_core", None)
    # the stand-in points DeviceInfo's HPU torch.device at the CPU when imported: undone after the test
    monkeypatch.setattr(DeviceInfo, "torch_device", DeviceInfo.torch_device)
    yield
    _drop_habana_modules()
    device._hpu_core = None


def _stub(name: str):
    """The stand-in module ``habana_frameworks.torch.<name>`` as imported now (the one device.py loaded)."""
    return sys.modules[f"habana_frameworks.torch.{name}"]


# --- device resolution without Gaudi ---


def test_cpu_is_cpu(no_habana):
    info = resolve_device("cpu")
    assert info == DeviceInfo("cpu", lazy_mode=False)
    assert info.torch_device == torch.device("cpu")
    assert LAZY not in os.environ


def test_auto_on_this_machine(no_habana):
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device().type == expected


def test_auto_with_lazy_mode_but_no_gaudi_ignores_it(no_habana):
    info = resolve_device("auto", use_lazy_mode=True)
    assert info.type in ("cpu", "cuda")
    assert info.lazy_mode is False
    assert LAZY not in os.environ  # only the HPU branch sets it


def test_unknown_device_refused():
    with pytest.raises(UserError, match="--device tpu is not one of auto, cpu, cuda, hpu"):
        resolve_device("tpu")


def test_cuda_on_cpu_only_torch_refused(no_habana):
    if torch.version.cuda is not None:
        pytest.skip("this torch is a CUDA build")
    with pytest.raises(UserError) as err:
        resolve_device("cuda")
    message = str(err.value)
    assert "CPU-only PyTorch build" in message
    assert "--device cpu" in message


def test_hpu_without_habana_refused(no_habana):
    with pytest.raises(UserError) as err:
        resolve_device("hpu")
    assert "habana_frameworks" in str(err.value)
    assert "--device cpu" in str(err.value)
    with pytest.raises(UserError, match="habana_frameworks"):
        resolve_device("auto", use_habana=True)


@pytest.mark.parametrize("dev", ["cpu", "cuda"])
def test_use_habana_conflicts_with_other_devices(dev):
    with pytest.raises(UserError, match=f"--use_habana and --device {dev} disagree"):
        resolve_device(dev, use_habana=True)


@pytest.mark.parametrize("dev", ["cpu", "cuda"])
def test_lazy_mode_conflicts_with_other_devices(dev, no_habana):
    with pytest.raises(UserError, match=f"--use_lazy_mode .* conflicts with --device {dev}"):
        resolve_device(dev, use_lazy_mode=True)
    assert LAZY not in os.environ


def test_mark_step_is_a_noop_without_gaudi(no_habana, monkeypatch):
    monkeypatch.setattr(device, "_hpu_core", None)
    resolve_device("cpu")
    assert device.mark_step() is None
    assert device._hpu_core is None


# --- precision ---


def test_precision_both_flags_refused():
    for kind in ("cpu", "cuda", "hpu"):
        with pytest.raises(UserError, match="mutually exclusive"):
            resolve_precision(DeviceInfo(kind), bf16=True, fp16=True)


def test_precision_fp16_on_cpu_refused():
    with pytest.raises(UserError) as err:
        resolve_precision(DeviceInfo("cpu"), bf16=False, fp16=True)
    assert "--fp16 is not supported on CPU" in str(err.value)
    assert "--bf16" in str(err.value)


def test_precision_values():
    assert resolve_precision(DeviceInfo("cpu"), bf16=True, fp16=False) == "bfloat16"
    assert resolve_precision(DeviceInfo("cpu"), bf16=False, fp16=False) == "float32"
    assert resolve_precision(DeviceInfo("hpu"), bf16=False, fp16=True) == "float16"
    assert resolve_precision(DeviceInfo("hpu"), bf16=True, fp16=False) == "bfloat16"
    assert device.torch_dtype("bfloat16") is torch.bfloat16
    assert device.torch_dtype("float16") is torch.float16
    assert device.torch_dtype("float32") is torch.float32


def test_precision_bf16_on_old_gpu_falls_back_to_fp16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision(DeviceInfo("cuda"), bf16=True, fp16=False) == "float16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision(DeviceInfo("cuda"), bf16=True, fp16=False) == "bfloat16"


# --- configure_training_args ---


def test_configure_training_args_cpu_keeps_bf16(tmp_path, no_habana):
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path / "out"))
    assert args.use_cpu is False
    args.bf16 = True  # asked for; a TrainingArguments built with bf16=True and no use_cpu refuses on a CPU box
    info = configure_training_args(args, DeviceArguments(device="cpu"))
    assert info == DeviceInfo("cpu")
    assert args.use_cpu is True
    assert args.bf16 is True
    assert args.fp16 is False


def test_configure_training_args_cpu_without_precision(tmp_path, no_habana):
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path / "out"))
    configure_training_args(args, DeviceArguments(device="cpu"))
    assert (args.use_cpu, args.bf16, args.fp16) == (True, False, False)  # bf16=False given: float32


# --- automatic precision and CPU threads ---

CPUINFO = "processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu sse2 avx2 {extra}\n\n"


@pytest.mark.parametrize("extra, expected", [("avx512f amx_tile amx_bf16 avx512_bf16", "amx_bf16"),
                                             ("avx512f avx512_bf16", "avx512_bf16"), ("avx512f", None), ("", None)])
def test_cpu_bf16_feature_reads_the_flags(tmp_path, extra, expected):
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO.format(extra=extra))
    assert device.cpu_bf16_feature(str(path)) == expected
    assert device.cpu_bf16_feature(str(tmp_path / "missing")) is None


@pytest.mark.parametrize("feature, expected", [("amx_bf16", "bfloat16"), (None, "float32")])
def test_no_precision_flag_follows_the_cpu(monkeypatch, caplog, feature, expected):
    monkeypatch.setattr(device, "cpu_bf16_feature", lambda: feature)
    with caplog.at_level("INFO", logger="rlhfkit.device"):
        assert resolve_precision(DeviceInfo("cpu"), bf16=None, fp16=False) == expected
    assert f"precision: {expected}" in caplog.text
    assert resolve_precision(DeviceInfo("cpu"), bf16=False, fp16=False) == "float32"  # an explicit no wins
    assert resolve_precision(DeviceInfo("cpu"), bf16=True, fp16=False) == "bfloat16"


def test_no_precision_flag_on_gpus_and_gaudi(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Test GPU")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision(DeviceInfo("cuda"), bf16=None, fp16=False) == "bfloat16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision(DeviceInfo("cuda"), bf16=None, fp16=False) == "float32"
    assert resolve_precision(DeviceInfo("cuda"), bf16=None, fp16=True) == "float16"
    assert resolve_precision(DeviceInfo("hpu"), bf16=None, fp16=False) == "bfloat16"


def test_configure_training_args_resolves_an_absent_precision(no_habana, monkeypatch):
    monkeypatch.setattr(device, "cpu_bf16_feature", lambda: "amx_bf16")
    ns = argparse.Namespace(device="cpu", use_habana=False, use_lazy_mode=False, bf16=None, fp16=False, use_cpu=False)
    configure_training_args(ns, ns)
    assert (ns.use_cpu, ns.bf16, ns.fp16) == (True, True, False)
    monkeypatch.setattr(device, "cpu_bf16_feature", lambda: None)
    ns.bf16 = None
    configure_training_args(ns, ns)
    assert ns.bf16 is False


def test_usable_cores_follow_affinity_and_cgroup_quota(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    quota = tmp_path / "cpu.max"
    quota.write_text("250000 100000\n")  # 2.5 CPUs: 3 threads
    assert device.usable_cpu_cores(str(quota)) == 3
    quota.write_text("max 100000\n")
    assert device.usable_cpu_cores(str(quota)) == 8
    assert device.usable_cpu_cores(str(tmp_path / "absent")) == 8


def test_cpu_threads_capped_at_usable_cores(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(device, "usable_cpu_cores", lambda: 1)
    try:
        torch.set_num_threads(2)
        assert device.cap_cpu_threads() == 1
        assert torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's explicit choice stays
        torch.set_num_threads(2)
        assert device.cap_cpu_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_configure_training_args_refuses_fp16_on_cpu(no_habana):
    ns = argparse.Namespace(device="cpu", use_habana=False, use_lazy_mode=False, bf16=False, fp16=True, use_cpu=False)
    with pytest.raises(UserError, match="--fp16 is not supported on CPU"):
        configure_training_args(ns, ns)


def test_configure_training_args_on_a_namespace(no_habana):
    ns = argparse.Namespace(device="cpu", use_habana=False, use_lazy_mode=False, bf16=1, fp16=None, use_cpu=False)
    assert configure_training_args(ns, ns).type == "cpu"
    assert (ns.use_cpu, ns.bf16, ns.fp16) == (True, True, False)


# --- the HPU branch, with the stand-in habana_frameworks ---


def test_stub_is_found_and_not_imported_by_detection(habana_stub):
    assert device.habana_installed() is True
    assert _habana_modules() == []


def test_auto_picks_hpu_when_habana_is_importable(habana_stub):
    info = resolve_device("auto")
    assert info == DeviceInfo("hpu", lazy_mode=False)
    assert "habana_frameworks.torch.core" in sys.modules
    assert "habana_frameworks.torch.hpu" in sys.modules


def test_lazy_mode_set_before_import_and_mark_step_reaches_runtime(habana_stub):
    info = resolve_device("hpu", use_lazy_mode=True)
    assert info == DeviceInfo("hpu", lazy_mode=True)
    core = _stub("core")
    assert core.LAZY_MODE_AT_IMPORT == "1"  # in the environment before the runtime was imported
    assert os.environ[LAZY] == "1"
    assert core.MARK_STEP_CALLS == []
    device.mark_step()
    assert len(core.MARK_STEP_CALLS) == 1
    device.mark_step()
    assert len(core.MARK_STEP_CALLS) == 2


def test_seed_flags_use_habana_and_lazy_mode(habana_stub):
    info = resolve_device("auto", use_habana=True, use_lazy_mode=True)
    assert info == DeviceInfo("hpu", lazy_mode=True)
    assert _stub("core").LAZY_MODE_AT_IMPORT == "1"
    device.mark_step()
    assert len(_stub("core").MARK_STEP_CALLS) == 1


def test_lazy_mode_overrides_a_zero_in_the_environment(habana_stub, monkeypatch):
    monkeypatch.setenv(LAZY, "0")
    info = resolve_device("hpu", use_lazy_mode=True)
    assert info.lazy_mode is True
    assert _stub("core").LAZY_MODE_AT_IMPORT == "1"


def test_eager_mode_mark_step_is_a_noop(habana_stub):
    info = resolve_device("hpu")
    assert info == DeviceInfo("hpu", lazy_mode=False)
    core = _stub("core")
    assert core.LAZY_MODE_AT_IMPORT is None
    assert LAZY not in os.environ
    device.mark_step()
    device.mark_step()
    assert core.MARK_STEP_CALLS == []


def test_lazy_mode_from_the_environment_is_honoured(habana_stub, monkeypatch):
    monkeypatch.setenv(LAZY, "1")
    info = resolve_device("hpu")
    assert info.lazy_mode is True
    device.mark_step()
    assert len(_stub("core").MARK_STEP_CALLS) == 1


def test_hpu_without_a_visible_card_refused(habana_stub):
    hpu = importlib.import_module("habana_frameworks.torch.hpu")
    hpu.AVAILABLE = False
    with pytest.raises(UserError, match="no Gaudi card is visible"):
        resolve_device("hpu")
    assert device._hpu_core is None
    device.mark_step()
    assert _stub("core").MARK_STEP_CALLS == []


def test_cpu_imports_nothing_from_habana_even_when_installed(habana_stub):
    assert device.habana_installed() is True
    assert resolve_device("cpu") == DeviceInfo("cpu")
    assert _habana_modules() == []
    assert LAZY not in os.environ
    with pytest.raises(UserError):
        resolve_device("cpu", use_habana=True)
    with pytest.raises(UserError):
        resolve_device("cpu", use_lazy_mode=True)
    assert _habana_modules() == []
    assert LAZY not in os.environ


def test_stub_state_does_not_leak_between_tests(habana_stub):
    # runs after the tests above in file order: a fresh import means a fresh counter and a visible card
    info = resolve_device("hpu", use_lazy_mode=True)
    assert info.type == "hpu"
    assert _stub("hpu").AVAILABLE is True
    assert _stub("core").MARK_STEP_CALLS == []
