"""The device switch every script shares: ``--device auto|cpu|cuda|hpu``, optimum-habana's Gaudi flags, precision.

* ``auto`` picks HPU, then CUDA, then CPU. HPU is detected by looking for the ``habana_frameworks`` package
  without importing it; nothing Habana-specific is imported unless HPU is chosen (explicitly or by ``auto``).
* ``--use_habana`` (optimum-habana's flag) means ``--device hpu``. ``--use_lazy_mode`` sets ``PT_HPU_LAZY_MODE=1`` *before*
  the HPU runtime is imported, which is the only moment the runtime reads it.
* Precision (Trainer scripts): with no ``--bf16``/``--fp16`` flag, bfloat16 autocast where the device computes
  it natively (a CUDA GPU from Ampere on, Gaudi, a CPU with AMX-BF16 or AVX512-BF16), else float32; one log line
  says which and why. ``--bf16 False`` keeps float32.
* On CPU, torch's thread count is capped at the cores this process may really use (its CPU affinity and the
  cgroup's CPU quota), which torch's default (the machine's physical cores) ignores inside containers.
* :func:`mark_step` is the one hook training loops call after backward and after the optimizer step: it
  flushes the lazy-mode graph on Gaudi and does nothing anywhere else.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import logging
import os
from dataclasses import dataclass, field

from rlhfkit import aliases
from rlhfkit.errors import UserError

logger = logging.getLogger(__name__)

DEVICE_CHOICES = ("auto", "cpu", "cuda", "hpu")
LAZY_MODE_ENV = "PT_HPU_LAZY_MODE"


@dataclass
class DeviceArguments:
    """Flags that choose where a script runs (shared by every script)."""

    device: str = field(
        default="auto",
        metadata={"help": "Where to run: auto (hpu, then cuda, then cpu), cpu, cuda or hpu.", "choices": DEVICE_CHOICES},
    )
    use_habana: bool = field(default=False, metadata={"help": "Run on Intel Gaudi (same as --device hpu)."})
    use_lazy_mode: bool = field(
        default=False, metadata={"help": "Gaudi lazy mode: sets PT_HPU_LAZY_MODE=1 before the HPU runtime loads."}
    )


@dataclass
class PrecisionArguments:
    """``--bf16`` / ``--fp16`` for scripts that are not built on a transformers ``TrainingArguments``."""

    bf16: bool = field(default=False, metadata={"help": "Compute in bfloat16."})
    fp16: bool = field(default=False, metadata={"help": "Compute in float16 (CUDA and HPU only)."})


@dataclass(frozen=True)
class DeviceInfo:
    """The device a script resolved to."""

    type: str  # "cpu" | "cuda" | "hpu"
    lazy_mode: bool = False

    @property
    def torch_device(self):
        import torch

        return torch.device(self.type)


# The runtime module whose ``mark_step`` the hook calls; set only when HPU lazy mode is active.
_hpu_core = None


def mark_step() -> None:
    """Flush the pending lazy-mode graph on Gaudi; a no-op on CPU, CUDA and HPU eager mode."""
    if _hpu_core is not None:
        _hpu_core.mark_step()


def habana_installed() -> bool:
    """Whether the Gaudi PyTorch bridge is installed, found without importing it."""
    try:
        return importlib.util.find_spec("habana_frameworks") is not None
    except (ImportError, ValueError):
        return False


def resolve_device(device: str = "auto", use_habana: bool = False, use_lazy_mode: bool = False) -> DeviceInfo:
    """Turn the device flags into a :class:`DeviceInfo`, loading the HPU runtime only when HPU is chosen.

    Raises :class:`UserError` when the requested device is absent or the flags contradict each other.
    """
    global _hpu_core
    if device not in DEVICE_CHOICES:
        raise UserError(f"--device {device} is not one of {', '.join(DEVICE_CHOICES)}")
    device = aliases.resolve("use_habana", use_habana, device, "auto")
    if use_lazy_mode and device not in ("auto", "hpu"):
        raise UserError(f"--use_lazy_mode is a Gaudi option and conflicts with --device {device}: drop it")

    if device == "auto":
        if habana_installed():
            device = "hpu"
        elif _cuda_available():
            device = "cuda"
        else:
            device = "cpu"
        if use_lazy_mode and device != "hpu":
            logger.warning("--use_lazy_mode ignored: no Gaudi (habana_frameworks) found, running on %s", device)
        logger.info("--device auto resolved to %s", device)

    if device == "cuda":
        if not _cuda_available():
            import torch

            build = "a CPU-only PyTorch build" if torch.version.cuda is None else "no visible CUDA GPU"
            raise UserError(f"--device cuda requested but this machine has {build}: use --device cpu or auto")
        return DeviceInfo("cuda")
    if device == "cpu":
        return DeviceInfo("cpu")

    # HPU: the lazy-mode variable must be in the environment before habana_frameworks is imported.
    if use_lazy_mode:
        if os.environ.get(LAZY_MODE_ENV, "1") != "1":
            logger.warning("--use_lazy_mode overrides %s=%s", LAZY_MODE_ENV, os.environ[LAZY_MODE_ENV])
        os.environ[LAZY_MODE_ENV] = "1"
    if not habana_installed():
        raise UserError(
            "--device hpu (or --use_habana) requested but habana_frameworks is not installed: "
            "run inside the Gaudi container (make build && make run) or use --device cpu/cuda/auto"
        )
    core = importlib.import_module("habana_frameworks.torch.core")
    hpu = importlib.import_module("habana_frameworks.torch.hpu")
    if not hpu.is_available():
        raise UserError("--device hpu requested but no Gaudi card is visible to habana_frameworks: check hl-smi")
    lazy = os.environ.get(LAZY_MODE_ENV, "0") == "1"
    _hpu_core = core if lazy else None
    logger.info("running on HPU (%s mode)", "lazy" if lazy else "eager")
    return DeviceInfo("hpu", lazy_mode=lazy)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def cpu_bf16_feature(cpuinfo: str = "/proc/cpuinfo") -> str | None:
    """The CPU feature that makes bfloat16 matrix products fast here (``amx_bf16``, ``avx512_bf16``), or None.

    Without one of them oneDNN emulates bfloat16 and autocast is slower than float32; with AMX, bfloat16
    matrix products run about 2.5x float32's rate (measured on a 2-core Sapphire Rapids: 740 vs 290 GFLOP/s)."""
    try:
        with open(cpuinfo, encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return next((f for f in ("amx_bf16", "avx512_bf16") if f in flags), None)
    except OSError:
        pass
    return None


def usable_cpu_cores(cpu_max: str = "/sys/fs/cgroup/cpu.max") -> int:
    """Cores this process may use: its CPU affinity, further capped by a cgroup v2 CPU quota (``cpu.max``)."""
    import math

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        with open(cpu_max, encoding="utf-8") as handle:
            quota, period = handle.read().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


def cap_cpu_threads() -> int:
    """Lower torch's intra-op threads to :func:`usable_cpu_cores` when above it (more threads than cores makes
    every OpenMP barrier wait on a descheduled thread); an explicit ``OMP_NUM_THREADS`` is left alone."""
    import torch

    threads = torch.get_num_threads()
    if "OMP_NUM_THREADS" not in os.environ:
        usable = usable_cpu_cores()
        if threads > usable:
            torch.set_num_threads(usable)
            logger.info("torch threads: %d -> %d (the cores this process may use)", threads, usable)
            threads = usable
    return threads


def auto_precision(info: DeviceInfo) -> tuple[str, str]:
    """(dtype name, why) when no precision flag is given: bfloat16 where the device computes it natively."""
    if info.type == "hpu":
        return "bfloat16", "Gaudi computes in bfloat16 natively"
    if info.type == "cuda":
        import torch

        if torch.cuda.is_bf16_supported():
            return "bfloat16", f"{torch.cuda.get_device_name()} supports bfloat16"
        return "float32", "this GPU has no bfloat16 (pass --fp16 for mixed precision)"
    feature = cpu_bf16_feature()
    if feature:
        return "bfloat16", f"this CPU has {feature}"
    return "float32", "this CPU has no native bfloat16 (AMX-BF16 / AVX512-BF16)"


def resolve_precision(info: DeviceInfo, bf16: bool | None, fp16: bool) -> str:
    """Pick the compute dtype name ("float32", "bfloat16" or "float16") the device can really do.

    * ``bf16`` None and no ``fp16``: :func:`auto_precision`, logged;
    * both flags: an error;
    * ``--fp16`` on CPU: an error (no fp16 kernels worth using there): use ``--bf16``;
    * ``--bf16`` on a CUDA GPU without bf16 (before Ampere): falls back to fp16 with a warning.
    """
    if bf16 and fp16:
        raise UserError("--bf16 and --fp16 are mutually exclusive: pass one of them")
    if bf16 is None and not fp16:
        name, why = auto_precision(info)
        logger.info("precision: %s (no --bf16/--fp16 given: %s; --bf16 %s to change)", name, why,
                    "False" if name == "bfloat16" else "True")
        return name
    if fp16 and info.type == "cpu":
        raise UserError("--fp16 is not supported on CPU: use --bf16 or no precision flag")
    if bf16 and info.type == "cuda":
        import torch

        if not torch.cuda.is_bf16_supported():
            logger.warning("this GPU has no bfloat16 support: falling back to --fp16")
            return "float16"
    if bf16:
        return "bfloat16"
    if fp16:
        return "float16"
    return "float32"


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def configure_training_args(training_args, device_args: DeviceArguments) -> DeviceInfo:
    """Apply the device switch to a transformers/TRL ``TrainingArguments`` (or to the parsed namespace it is
    built from, which has both sets of fields: pass it as both arguments) before the trainer is built.

    CPU is forced with ``use_cpu`` (and torch's threads capped, :func:`cap_cpu_threads`); the precision flags are
    checked (and fall back, or are chosen when absent) as in :func:`resolve_precision`. Returns the resolved
    device.
    """
    info = resolve_device(device_args.device, device_args.use_habana, device_args.use_lazy_mode)
    bf16 = None if training_args.bf16 is None else bool(training_args.bf16)
    precision = resolve_precision(info, bf16, bool(training_args.fp16))
    training_args.bf16 = precision == "bfloat16"
    training_args.fp16 = precision == "float16"
    if info.type == "cpu":
        training_args.use_cpu = True
        cap_cpu_threads()
    return info


def describe(info: DeviceInfo) -> dict:
    """A small dict about the device, for ``all_results.json``."""
    out = dataclasses.asdict(info)
    if info.type == "cuda":
        import torch

        out["name"] = torch.cuda.get_device_name()
    elif info.type == "cpu":
        import torch

        out["threads"] = torch.get_num_threads()
    return out
