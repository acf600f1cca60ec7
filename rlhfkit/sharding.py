"""How the processes of a run share the model (accelerate's DDP, FSDP2, DeepSpeed ZeRO), and what our own PPO
engine needs beyond ``accelerator.prepare`` to run sharded:

* :func:`describe`: the layout in one word, for the logs and ``all_results.json``;
* :func:`configure_deepspeed`: the batch, accumulation and clipping DeepSpeed's config must state when no
  dataloader is prepared (TRL's trainers get them from their dataloader; our PPO loop has none);
* :func:`prepare_frozen`: a frozen model (the reference, the reward model) sharded for inference as the policy is
  for training (OpenRLHF's arrangement), not replicated on every process;
* :func:`gathered_for_generation`: the policy's parameters gathered once for ``generate`` (TRL's
  ``unwrap_model_for_generation``), instead of one all-gather per layer per new token;
* :func:`end_process_group`: the process group torn down before the interpreter exits;
* :func:`exit_without_finalizing`: a finished process of a multi-process run ends without finalizing the
  interpreter (gloo's worker threads would abort it).
"""

from __future__ import annotations

import contextlib
import logging

logger = logging.getLogger(__name__)


def describe(accelerator) -> str:
    """``single``, ``ddp``, ``fsdp2`` (``fsdp1``), ``deepspeed-zero<stage>``, ... : how the model is shared."""
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    if kind == DistributedType.DEEPSPEED:
        return f"deepspeed-zero{accelerator.state.deepspeed_plugin.zero_stage}"
    if kind == DistributedType.FSDP:
        return "fsdp2" if accelerator.is_fsdp2 else "fsdp1"
    if accelerator.num_processes == 1:
        return "single"
    return {DistributedType.MULTI_GPU: "ddp", DistributedType.MULTI_CPU: "ddp",
            DistributedType.MULTI_HPU: "ddp"}.get(kind, str(kind).lower())


def is_sharded(accelerator) -> bool:
    """Whether parameters, gradients or optimizer states live in shards (FSDP, DeepSpeed ZeRO)."""
    return describe(accelerator).startswith(("fsdp", "deepspeed"))


def zero_stage(accelerator) -> int | None:
    """DeepSpeed's ZeRO stage, or None when DeepSpeed is not in use."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return None
    return int(accelerator.state.deepspeed_plugin.zero_stage)


def configure_deepspeed(accelerator, micro_batch_size: int, gradient_accumulation_steps: int,
                        max_grad_norm: float, hidden_size: int | None = None) -> None:
    """State what DeepSpeed's config leaves to a dataloader ("auto"), before ``accelerator.prepare``: the
    micro-batch per process, the accumulation steps and the clipping norm (DeepSpeed clips inside its step, so
    ``accelerator.clip_grad_norm_`` only reads the norm back). ZeRO-3's bucket sizes, unless the config names them,
    follow the model's hidden size as transformers' Trainer sets them (DeepSpeed's own defaults, 5e8-element
    buffers, are sized for billion-parameter models). On CPU, where gloo cannot overlap an all-gather with
    computation, ZeRO-3 neither prefetches nor keeps a layer's parameters for their reuse in backward (both,
    unless the config names them, 0): with DeepSpeed's defaults every layer fetched in forward stays whole until
    backward, and a process holds the full model through the update (measured in docs/distributed.md). Nothing
    happens without DeepSpeed."""
    stage = zero_stage(accelerator)
    if stage is None:
        return
    config = accelerator.state.deepspeed_plugin.deepspeed_config
    world = accelerator.num_processes
    config["train_micro_batch_size_per_gpu"] = micro_batch_size
    config["gradient_accumulation_steps"] = gradient_accumulation_steps
    config["train_batch_size"] = micro_batch_size * gradient_accumulation_steps * world
    config["gradient_clipping"] = float(max_grad_norm) if max_grad_norm > 0 else 0.0
    zero = config.setdefault("zero_optimization", {})
    sizes = {}
    if hidden_size:
        sizes["reduce_bucket_size"] = hidden_size * hidden_size
        if stage == 3:
            sizes.update(stage3_prefetch_bucket_size=int(0.9 * hidden_size * hidden_size),
                         stage3_param_persistence_threshold=10 * hidden_size)
    if stage == 3 and accelerator.device.type == "cpu":
        sizes.update(stage3_prefetch_bucket_size=0, stage3_max_reuse_distance=0)
    for key, value in sizes.items():
        if zero.get(key, "auto") == "auto":
            zero[key] = value


def prepare_frozen(accelerator, model):
    """A frozen model (the reference, the reward model) placed for inference under this run's layout: sharded as
    the policy is under ZeRO-3 (a DeepSpeed inference engine) and FSDP2 (one ``fully_shard`` unit), else on the
    device whole (DDP, ZeRO-2: replicated, as DeepSpeed's own stage 0 would). TRL's ``prepare_deepspeed`` and
    ``prepare_fsdp`` do the wrapping. Called on every process."""
    kind = describe(accelerator)
    if kind == "deepspeed-zero3":
        from trl.models.utils import prepare_deepspeed

        return prepare_deepspeed(model, accelerator)
    if kind == "fsdp2":
        from trl.models.utils import prepare_fsdp

        model.to(accelerator.device)
        prepare_fsdp(model, accelerator)
        model.eval()
        return model
    return model.to(accelerator.device)


def unwrap_frozen(model):
    """The module behind :func:`prepare_frozen`'s result (a DeepSpeed engine's ``.module``), for attribute access."""
    return getattr(model, "module", model)


@contextlib.contextmanager
def gathered(accelerator, *models):
    """Every parameter of ``models`` whole on every process for the duration. The trained model (prepared by
    accelerate): ZeRO-3 gathers its partitions once (``GatheredParameters``) and lifts its per-module fetch
    hooks, as TRL's ``unwrap_model_for_generation`` does; FSDP2 unshards every unit and keeps it unsharded across
    forwards. A frozen model from :func:`prepare_frozen` (no parameter trains): FSDP2 unshards it; ZeRO-3 leaves it
    to its per-module hooks, each layer fetched as it runs (its inference engine also has an ``optimizer``, the
    parameter coordinator, so that alone does not tell the two apart). Costs one full copy of each gathered model
    per process while it lasts; without it, generation would all-gather every layer again for each new token.
    Elsewhere it does nothing."""
    kind = describe(accelerator)
    with contextlib.ExitStack() as stack:
        for model in models:
            if model is None:
                continue
            if kind == "deepspeed-zero3" and any(p.requires_grad for p in model.parameters()):
                stack.enter_context(_gathered_zero3(model))
            elif kind == "fsdp2":
                stack.enter_context(_gathered_fsdp2(model))
        yield


@contextlib.contextmanager
def _gathered_zero3(engine):
    import deepspeed
    from trl.models.utils import add_hooks, remove_hooks

    with deepspeed.zero.GatheredParameters(list(engine.parameters())):
        remove_hooks(engine)
        try:
            yield
        finally:
            add_hooks(engine)


@contextlib.contextmanager
def _gathered_fsdp2(model):
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    if units:  # FSDP2 sets its units up at the root's first forward; generation calls the layers without it
        units[0]._get_fsdp_state()._lazy_init()
    # each unit's own resharding choice (the root's is False, the layers' True), restored afterwards: FSDP2 has a
    # setter for it but no getter
    saved = [(state, state._auto_reshard_after_forward, [(g, g.post_forward_mesh_info) for g in
                                                          state._fsdp_param_groups])
             for state in (unit._get_fsdp_state() for unit in units)]
    for unit in units:
        unit.unshard()
        unit.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for state, auto, groups in saved:
            state._auto_reshard_after_forward = auto
            for group, info in groups:
                group.post_forward_mesh_info = info
        for unit in units:
            unit.reshard()


def sharded_launch() -> str | None:
    """``deepspeed`` or ``fsdp`` when ``accelerate launch`` started this process for one (its environment), else
    None."""
    import os

    for name, variable in (("deepspeed", "ACCELERATE_USE_DEEPSPEED"), ("fsdp", "ACCELERATE_USE_FSDP")):
        if os.environ.get(variable, "false").lower() in ("1", "true", "yes"):
            return name
    return None


def start_cpu_processes() -> bool:
    """On a machine without GPUs, the process group of a DeepSpeed or FSDP launch, over gloo, before any
    ``Accelerator`` is built; True when it did so (build the Accelerator with ``cpu=False`` then).

    accelerate 1.15 gets both wrong on CPU: with ``cpu=True`` it drops DeepSpeed and FSDP and trains with DDP;
    without, it finds no backend and counts 1 process while DeepSpeed runs 2 (each then reads the whole batch).
    Naming gloo gives the right count and DeepSpeed; FSDP additionally needs the group labelled MULTI_GPU, the
    only kind accelerate applies FSDP to (torch's fully_shard itself runs over gloo)."""
    import os

    import torch

    launch = sharded_launch()
    if launch is None or torch.cuda.is_available() or int(os.environ.get("LOCAL_RANK", -1)) == -1:
        return False
    from accelerate import PartialState

    fsdp_on_cpu(PartialState(cpu=False, backend="gloo"))  # labelled NO: accelerate finds no GPU backend
    return True


def end_process_group(finished: bool) -> int:
    """On the way out of every script (:func:`rlhfkit.cli.script_cli`): when this process ``finished`` its work,
    wait for the others, then destroy the default process group, if one is up. Returns the number of processes
    the group held (0: none was up).

    TRL's trainers leave the group up, and the processes end at different times: the main one still writes the
    model and results while the others have nothing left to do and exit. Waiting for everyone and then destroying
    the group (torch's documented shutdown, what ``Accelerator.end_training`` does) ends every process in the same
    order. A process that failed does not wait: the others' barrier then fails too, and the launcher reports the
    first failure. That alone does not make the exit safe with gloo: see :func:`exit_without_finalizing`."""
    import sys

    if "torch.distributed" not in sys.modules:  # nothing started one (and --help stays free of torch)
        return 0
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return 0
    processes = dist.get_world_size()
    if finished and processes > 1:
        dist.barrier()
    dist.destroy_process_group()
    return processes


def exit_without_finalizing(code: int = 0) -> None:
    """End a process of a multi-process run that finished, without the interpreter's finalization: the Python
    threads still running are joined, the ``atexit`` functions run (logging's flush among them), stdout and stderr
    are flushed, then ``os._exit(code)``.

    Why: torch's gloo backend has no shutdown, and ``destroy_process_group`` only unregisters its groups; their
    worker threads live on and release the last collectives' work objects when they get to it. Under load that
    can be after the main thread started finalizing the interpreter, and a work object holding a tensor with a
    Python reference then takes the GIL from a dying interpreter: the worker thread is torn down inside a
    destructor and the process aborts ("terminate called without an active exception", SIGABRT) after all its
    work was done, and the launcher fails the run. Seen in CI on 2-process dpo.py runs under ZeRO-3 and FSDP2,
    reproduced here 1 run in 8 with two busy cores (core dump: ``~AsyncAllgatherWork`` from a gloo worker thread
    in ``take_gil`` while the main thread was in ``Py_FinalizeEx``).
    Nothing is left to finalize that matters: the results were written atomically before this point."""
    import atexit
    import os
    import sys
    import threading

    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken stream: nothing more can be said on it
            pass
    os._exit(code)


def fsdp_on_cpu(state) -> bool:
    """Let an FSDP launch shard on CPU: relabel the CPU process group (``state``: accelerate's ``PartialState``)
    MULTI_GPU, the only kind of group accelerate 1.15 applies FSDP to (torch's fully_shard itself runs over gloo);
    else the run silently trains with DDP. True when it relabelled. The state is shared: every later
    AcceleratorState reads it."""
    from accelerate.utils import DistributedType

    cpu_group = state.distributed_type in (DistributedType.MULTI_CPU, DistributedType.NO) and state.num_processes > 1
    if sharded_launch() != "fsdp" or not cpu_group:
        return False
    state.distributed_type = DistributedType.MULTI_GPU
    return True


def whole_weights(accelerator, module) -> dict | None:
    """Inside :func:`gathered`: ``module``'s weights as plain CPU tensors by name (its state-dict keys) under
    FSDP2 and ZeRO-3, for ``save_pretrained(state_dict=...)``; None elsewhere (the module's own state dict is
    whole). FSDP2's own ``state_dict()`` hands out the sharded parameters even while they are gathered."""
    if describe(accelerator) not in ("fsdp2", "deepspeed-zero3"):
        return None
    weights = {name: p.detach().to("cpu", copy=True) for name, p in module.named_parameters()}
    persistent = set(module.state_dict().keys())
    weights.update({name: b.detach().to("cpu", copy=True) for name, b in module.named_buffers() if name in persistent})
    return weights
