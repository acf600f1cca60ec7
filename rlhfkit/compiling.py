"""``--torch_compile`` left unset: compile the model once the run has shown it is long enough to pay the compile back.

``torch.compile`` (inductor) fuses the element-wise work of a training step (the norms, rotary embeddings, the
activation, the casts), which a CPU step spends a third of its time on. Measured on the benchmark's 43M Llama
(``sft.py`` full fine-tuning, bf16, padding-free, 2 Sapphire Rapids cores): forward + backward 1.10 -> 0.91 s a
step after 7-12 s of compiling (more whenever a new kind of shape or the evaluation comes); a 64-step run came out
3.5% (full) to 6% (LoRA) shorter in all, a 300-step run 11% shorter (328 -> 292 s, the same loss), so the compile
pays back after about 50 steps there, and a model whose steps take milliseconds would never pay it back. The
Trainer can only compile from the start (``--torch_compile True``), before anything is known about the run's
length; :class:`AutoCompile` instead times the first steps uncompiled and compiles the model in place
(``nn.Module.compile``: every later call, training and evaluation, goes through the compiled module) when the steps
left would take at least :data:`MIN_REMAINING_SECONDS` uncompiled.

Where it applies: the run left ``--torch_compile`` unset, on CPU, in one process (not measured on GPU or across
processes), and inductor finds its C++ compiler. Anywhere else it stays off and says why; ``--torch_compile True``
compiles from the start everywhere, ``False`` never.
"""

from __future__ import annotations

import logging
import time

logger = logging.getLogger(__name__)

TRIAL_STEPS = 3  # optimizer steps run uncompiled before deciding; the first one (warm-up) is not timed
MIN_REMAINING_SECONDS = 300.0  # projected uncompiled time left from which the run compiles


def unavailable(info, world_size: int, sharded: bool) -> str | None:
    """Why the automatic compile does not apply to this run (None: it does)."""
    if info.type != "cpu":
        return f"automatic compiling was measured on CPU only, not on {info.type}: --torch_compile True compiles"
    if world_size > 1 or sharded:
        return "automatic compiling applies to one process: --torch_compile True compiles every process"
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception:  # noqa: BLE001 - inductor's own search for g++/clang++ (or $CXX) failed, whatever its way
        return "inductor found no C++ compiler (g++ or clang++, or $CXX) to compile with"
    return None


def should_compile(step_seconds: list[float], steps_left: int) -> tuple[bool, float]:
    """(compile?, projected uncompiled seconds left) from the timed steps' durations and the steps left."""
    if not step_seconds or steps_left <= 0:
        return False, 0.0
    projected = sum(step_seconds) / len(step_seconds) * steps_left
    return projected >= MIN_REMAINING_SECONDS, projected


def auto_compile(trainer, training_args, info, setting: bool | None):
    """With ``setting`` None (``--torch_compile`` unset), add :class:`AutoCompile` to ``trainer`` when the run is
    one it applies to. Returns a function giving the choice for the results (``torch_compile``: on / off / auto:
    ..., filled in as the run goes)."""
    if setting is not None:
        return lambda: {"torch_compile": "on" if setting else "off"}
    why_not = unavailable(info, training_args.world_size, bool(training_args.fsdp or training_args.deepspeed))
    if why_not:
        logger.info("torch.compile off: %s", why_not)
        return lambda: {"torch_compile": f"auto: off ({why_not})"}
    callback = make_callback(trainer)
    trainer.add_callback(callback)
    return lambda: dict(callback.decision)


def make_callback(trainer):
    from transformers import TrainerCallback

    class AutoCompile(TrainerCallback):
        """Times optimizer steps 2..:data:`TRIAL_STEPS` and compiles ``trainer.model`` in place after them when
        :func:`should_compile` says so; ``decision`` records what happened, for the results."""

        def __init__(self):
            self.started = None
            self.seconds: list[float] = []
            self.decision = {"torch_compile": f"auto: undecided (runs of under {TRIAL_STEPS + 1} steps stay "
                                              "uncompiled)"}

        def on_step_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if self.started is None or len(self.seconds) >= TRIAL_STEPS:
                return
            self.seconds.append(time.perf_counter() - self.started)
            if len(self.seconds) < TRIAL_STEPS:
                return
            steps_left = state.max_steps - state.global_step
            yes, projected = should_compile(self.seconds[1:], steps_left)
            if yes:
                import torch._dynamo

                torch._dynamo.config.suppress_errors = True  # a failed compile falls back to eager, with a warning
                trainer.model.compile()
                logger.info("torch.compile on after step %d: %d steps left would take about %.0f s uncompiled "
                            "(compiling pays back above %.0f s; --torch_compile False to keep eager)",
                            state.global_step, steps_left, projected, MIN_REMAINING_SECONDS)
            else:
                logger.info("torch.compile off: %d steps left would take about %.0f s uncompiled, under the %.0f s "
                            "a compile pays back in (--torch_compile True compiles anyway)", steps_left, projected,
                            MIN_REMAINING_SECONDS)
            self.decision = {"torch_compile": f"auto: {'on' if yes else 'off'} after step {state.global_step}",
                             "torch_compile_projected_seconds": round(projected, 1)}

    return AutoCompile()
