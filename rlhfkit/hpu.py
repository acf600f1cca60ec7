"""Intel Gaudi (HPU) beyond the device switch: static shapes, HPU graphs, lazy-mode flushes, fused optimizer
and clipping, and the choice between optimum-habana's Gaudi trainers and TRL's.

Gaudi compiles a graph for every distinct input shape, so the Gaudi recipe is: shapes that repeat, a flush of
the lazy-mode graph after backward and after the optimizer step, HPU graphs to replay whole forward passes
without host overhead, and Habana's fused AdamW and gradient-norm clipping. optimum-habana's ``GaudiTrainer``
does all of this for transformers 4.5x; its newest release (1.21.2) pins ``transformers>=4.55,<4.56``, which no
TRL 1.x accepts (TRL 1.x needs ``transformers>=4.56.2``). So by default the Trainer scripts run TRL's own
trainers on the HPU through transformers/accelerate, and this module adds the same pieces from
``habana_frameworks`` directly (the package GaudiTrainer itself calls). optimum-habana's trainer is used only
when an installed release fits the installed transformers, accelerate and TRL (:func:`choose_trainer`).

Nothing here imports ``habana_frameworks`` unless the run is on HPU. Static shapes (``--pad_max``,
``--num_buckets``) work on every device: they also suit CUDA graphs and torch.compile.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import math
from dataclasses import dataclass, field

from rlhfkit import device
from rlhfkit.errors import UserError

logger = logging.getLogger(__name__)


@dataclass
class PadMaxArguments:
    """``--pad_max``: static shapes, so that Gaudi compiles one graph instead of one per length (they suit CUDA graphs
    and torch.compile too)."""

    pad_max: bool = field(
        default=False,
        metadata={"help": "Static shapes (one compiled graph on Gaudi instead of one per length). Trainer scripts: "
                  "every batch padded to --max_length tokens, the last partial batch dropped. ppo.py: prompts "
                  "left-padded to --input_max_length, responses always --output_max_length tokens (generation "
                  "runs past the stop token; the response is cut after it as usual), reward-model rows padded to "
                  "their sum."},
    )


@dataclass
class StaticShapeArguments(PadMaxArguments):
    """``--pad_max`` / ``--num_buckets`` for the Trainer scripts (padding through TRL's ``pad_to_multiple_of``)."""

    num_buckets: int = field(
        default=0,
        metadata={"help": "Static shapes with less padding: pad each batch up to the nearest of N equal-width "
                  "length buckets in (0, --max_length] (at most N shapes); 0: off."},
    )


@dataclass
class HPUGraphArguments:
    """``--use_hpu_graphs``, every script's: what it captures depends on what the script runs."""

    use_hpu_graphs: bool = field(
        default=False,
        metadata={"help": "Gaudi: replay forward passes as HPU graphs. Generation (static KV cache, prompts padded "
                  "to one width) and reward scoring in run_generation.py, compare_base_vs_ppo.py and ppo.py, and "
                  "PPO's frozen reference; PPO's update stays in lazy mode. Trainer scripts: the training forward "
                  "and backward (habana_frameworks' ModuleCacher), which needs --pad_max or --num_buckets and "
                  "is refused with gradient checkpointing. Ignored off Gaudi."},
    )


# ------------------------------------------------------------------------------------------- static shapes


def bucket_multiple(max_length: int | None, pad_max: bool, num_buckets: int) -> int | None:
    """The ``pad_to_multiple_of`` that gives static shapes: ``max_length`` itself (``--pad_max``: one width,
    every row is at most ``max_length`` after truncation) or ``ceil(max_length / num_buckets)`` (at most
    ``num_buckets`` widths); None when neither is asked."""
    if pad_max and num_buckets:
        raise UserError("--pad_max and --num_buckets both fix the padded length: pass one of them")
    if num_buckets < 0:
        raise UserError(f"--num_buckets {num_buckets} is negative: pass 0 (off) or a number of buckets")
    if not pad_max and not num_buckets:
        return None
    flag = "--pad_max" if pad_max else f"--num_buckets {num_buckets}"
    if not max_length:
        raise UserError(f"{flag} pads to --max_length, which is not set: pass --max_length N")
    if num_buckets > max_length:
        raise UserError(f"--num_buckets {num_buckets} exceeds --max_length {max_length}: use fewer buckets")
    return max_length if pad_max else math.ceil(max_length / num_buckets)


def apply_static_shapes(training_args, shapes: StaticShapeArguments) -> int | None:
    """Set a TRL config (SFTConfig, RewardConfig, DPOConfig) up for static shapes: its collator pads every batch
    to a multiple of :func:`bucket_multiple`, and the last partial batch is dropped so the batch size is fixed
    too. The critic-free trainers' configs (GRPOConfig, RLOOConfig: no ``max_length``) pad prompt ids and
    completion ids to multiples of ``--max_completion_length`` (``--pad_max``: one completion width) or of a
    fraction of it. Returns the multiple (None: shapes follow the data)."""
    if not hasattr(training_args, "max_length") and hasattr(training_args, "max_completion_length"):
        multiple = bucket_multiple(training_args.max_completion_length, shapes.pad_max, shapes.num_buckets)
        if multiple is not None:
            training_args.pad_to_multiple_of = multiple
            logger.info("static shapes: prompt and completion ids padded to multiples of %d tokens", multiple)
        return multiple
    multiple = bucket_multiple(training_args.max_length, shapes.pad_max, shapes.num_buckets)
    if multiple is None:
        return None
    flag = "--pad_max" if shapes.pad_max else "--num_buckets"
    if getattr(training_args, "padding_free", False):
        raise UserError(f"{flag} pads batches to fixed widths, --padding_free packs them without padding: drop one")
    if training_args.pad_to_multiple_of not in (None, multiple):
        raise UserError(f"{flag} sets the padding multiple itself: drop --pad_to_multiple_of")
    training_args.pad_to_multiple_of = multiple
    training_args.dataloader_drop_last = True
    widths = [multiple * k for k in range(1, math.ceil(training_args.max_length / multiple) + 1)]
    logger.info("static shapes: batches padded to %s tokens, the last partial batch dropped",
                widths[0] if len(widths) == 1 else f"one of {widths}")
    return multiple


# ------------------------------------------------------------------------------------- lazy-mode flushes


def flush_after_backward() -> None:
    """The lazy-mode flush after ``backward()`` (a no-op off Gaudi): the accumulated graph of forward and
    backward is compiled and launched here, instead of growing into the optimizer step."""
    device.mark_step()


def flush_after_optimizer_step() -> None:
    """The lazy-mode flush after ``optimizer.step()`` (a no-op off Gaudi)."""
    device.mark_step()


# ---------------------------------------------------------------------------------------------- HPU graphs


def _hpu_runtime():
    return importlib.import_module("habana_frameworks.torch.hpu")


def wrap_for_inference(module, info, enabled: bool, what: str):
    """``module`` wrapped in an HPU graph (``habana_frameworks.torch.hpu.wrap_in_hpu_graph``) when ``enabled``
    on Gaudi; unchanged elsewhere. Only for modules whose computation never changes between calls (frozen
    weights, or weights updated in place; no adapter switched on and off): a captured graph replays the
    computation it recorded."""
    if not enabled or info.type != "hpu":
        return module
    logger.info("HPU graphs: %s", what)
    return _hpu_runtime().wrap_in_hpu_graph(module)


def inference_view(module):
    """A second ``nn.Module`` object sharing ``module``'s parameters and submodules, to wrap in an HPU graph
    without changing how ``module`` itself runs (``wrap_in_hpu_graph`` replaces the ``forward`` of the object it
    is given). PPO's policy generates through such a view while its LoRA-disabled reference pass and its
    training forward run the module as it is."""
    import copy

    return copy.copy(module)


def warn_graphs_off_gaudi(info, enabled: bool) -> None:
    if enabled and info.type != "hpu":
        logger.warning("--use_hpu_graphs is a Gaudi option: ignored on %s", info.type)


def inference_setup(device_args, precision, graphs):
    """(device info, torch dtype, static) for the sampling scripts (run_generation.py, compare_base_vs_ppo.py, ppo.py):
    the device, the precision it gets, and whether HPU graphs (static shapes) apply: only on Gaudi, warned
    elsewhere."""
    info = device.resolve_device(device_args.device, device_args.use_habana, device_args.use_lazy_mode)
    warn_graphs_off_gaudi(info, graphs.use_hpu_graphs)
    dtype = device.torch_dtype(device.resolve_precision(info, precision.bf16, precision.fp16))
    return info, dtype, graphs.use_hpu_graphs and info.type == "hpu"


# ---------------------------------------------------------------------------- trainer backends on Gaudi


@dataclass
class TrainerChoice:
    """Which trainer class a Trainer script builds, and the keyword arguments the choice adds."""

    backend: str  # "trl" or "optimum-habana"
    trainer_cls: type
    reason: str
    gaudi_config: object = None
    args_cls: type | None = None


def unmet_requirements(distribution: str) -> list[str]:
    """The requirements of an installed ``distribution`` that the installed packages do not satisfy (only
    packages that are installed are checked: an absent optional one is not a conflict)."""
    from packaging.requirements import Requirement

    unmet = []
    for line in importlib.metadata.requires(distribution) or []:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue  # an extra, or not for this platform
        try:
            installed = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            continue
        if requirement.specifier and not requirement.specifier.contains(installed, prereleases=True):
            unmet.append(f"{requirement.name}{requirement.specifier} (installed: {installed})")
    return unmet


def _optimum_habana_trainer(kind: str, trl_cls) -> tuple[object, str]:
    """(optimum-habana's module with its Gaudi trainer for ``kind``, or None; why not)."""
    try:
        found = importlib.util.find_spec("optimum.habana") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        return None, "optimum-habana is not installed"
    try:
        version = importlib.metadata.version("optimum-habana")
    except importlib.metadata.PackageNotFoundError:
        return None, "optimum.habana is importable but has no installed optimum-habana distribution"
    unmet = unmet_requirements("optimum-habana")
    if unmet:
        return None, f"optimum-habana {version} requires {'; '.join(unmet)}"
    from rlhfkit.training import TRL_CONFIGS, TRL_TRAINERS

    module = importlib.import_module("optimum.habana.trl")
    name, config = f"Gaudi{TRL_TRAINERS[kind]}", f"Gaudi{TRL_CONFIGS[kind]}"
    gaudi_cls = getattr(module, name, None)
    if gaudi_cls is None or not issubclass(gaudi_cls, trl_cls):
        import trl

        return None, f"optimum-habana {version} has no {name} built on the installed TRL {trl.__version__}"
    if getattr(module, config, None) is None:
        return None, f"optimum-habana {version} has no {config}"
    return module, f"optimum-habana {version} fits the installed transformers, accelerate and TRL"


def choose_trainer(kind: str, training_args) -> TrainerChoice:
    """The trainer for ``kind`` ("sft", "reward", "dpo", "kto") on Gaudi: optimum-habana's ``Gaudi<X>Trainer`` with
    a ``GaudiConfig`` (fused AdamW, fused clip norm, autocast) when an installed optimum-habana fits the installed
    stack, else TRL's class with :func:`add_gaudi_hooks`. One log line says which and why."""
    import trl

    from rlhfkit.training import TRL_CONFIGS, TRL_TRAINERS

    trl_cls = getattr(trl, TRL_TRAINERS[kind])
    module, why = _optimum_habana_trainer(kind, trl_cls)
    if module is None:
        logger.info("trainer: TRL %s %s on the HPU through accelerate, with lazy-mode flushes and Habana's fused "
                    "AdamW and clip norm (optimum-habana not used: %s)", trl.__version__, trl_cls.__name__, why)
        return TrainerChoice("trl", trl_cls, why)
    gaudi_config = importlib.import_module("optimum.habana").GaudiConfig(
        use_fused_adam=True, use_fused_clip_norm=True, use_torch_autocast=bool(training_args.bf16))
    gaudi_cls = getattr(module, f"Gaudi{TRL_TRAINERS[kind]}")
    logger.info("trainer: optimum-habana %s with GaudiConfig(use_fused_adam, use_fused_clip_norm) (%s)",
                gaudi_cls.__name__, why)
    return TrainerChoice("optimum-habana", gaudi_cls, why, gaudi_config, getattr(module, f"Gaudi{TRL_CONFIGS[kind]}"))


def gaudi_trainer(kind: str, info, training_args, use_hpu_graphs: bool = False, **kwargs):
    """A Trainer script's trainer on Gaudi: :func:`choose_trainer`, :func:`build_trainer`, and on TRL's class
    :func:`add_gaudi_hooks` (optimum-habana's trainer does their work itself)."""
    choice = choose_trainer(kind, training_args)
    trainer = build_trainer(choice, info, training_args, use_hpu_graphs, **kwargs)
    if choice.backend == "trl":
        add_gaudi_hooks(trainer, use_hpu_graphs)
    return trainer


def build_trainer(choice: TrainerChoice, info, training_args, use_hpu_graphs: bool = False, **kwargs):
    """The trainer ``choice`` names, built from the script's TRL config; optimum-habana's gets its own config
    class (the same values plus ``use_habana``, ``use_lazy_mode``, ``use_hpu_graphs_for_training``) and the
    ``GaudiConfig``."""
    if choice.backend == "trl":
        return choice.trainer_cls(args=training_args, **kwargs)
    import dataclasses

    values = {f.name: getattr(training_args, f.name) for f in dataclasses.fields(training_args)
              if f.init and hasattr(training_args, f.name)}
    accepted = {f.name for f in dataclasses.fields(choice.args_cls)}
    values = {k: v for k, v in values.items() if k in accepted}
    values.update(use_habana=True, use_lazy_mode=info.lazy_mode, use_hpu_graphs_for_training=use_hpu_graphs)
    return choice.trainer_cls(args=choice.args_cls(**values), gaudi_config=choice.gaudi_config, **kwargs)


# ------------------------------------------------------------------------------- Gaudi pieces on TRL's trainers


def check_training_graphs(training_args, shapes) -> None:
    """Refuse ``--use_hpu_graphs`` for training (``shapes``: the script's arguments, with the static-shape and
    graph flags) where a captured graph would be wrong or useless."""
    if not shapes.use_hpu_graphs:
        return
    if not (shapes.pad_max or shapes.num_buckets):
        raise UserError("--use_hpu_graphs for training needs static shapes (a graph per batch length would "
                        "recompile every step): add --pad_max or --num_buckets N")
    if training_args.gradient_checkpointing:
        raise UserError("--use_hpu_graphs cannot capture a recomputed forward (gradient checkpointing): drop one")


def add_gaudi_hooks(trainer, use_hpu_graphs: bool = False) -> None:
    """What optimum-habana's trainer does itself, on a TRL trainer running on Gaudi: flush the lazy-mode graph after
    each ``training_step`` (forward and backward) and after each optimizer step, take AdamW and gradient clipping
    from Habana's fused kernels (``hpex``, what GaudiConfig's ``use_fused_adam`` / ``use_fused_clip_norm``
    select), and capture the training model with ``ModuleCacher`` under ``--use_hpu_graphs``."""
    from transformers import TrainerCallback

    training_step = trainer.training_step

    def step_then_flush(model, inputs, *args, **kwargs):
        loss = training_step(model, inputs, *args, **kwargs)
        flush_after_backward()
        return loss

    class FlushAfterOptimizerStep(TrainerCallback):
        def on_optimizer_step(self, args, state, control, **kwargs):
            flush_after_optimizer_step()

    trainer.training_step = step_then_flush
    trainer.add_callback(FlushAfterOptimizerStep())
    _use_fused_adamw(trainer)
    _use_fused_clip_norm(trainer)
    if use_hpu_graphs:
        _hpu_runtime().ModuleCacher()(model=trainer.model, inplace=True, allow_unused_input=True)
        logger.info("HPU graphs: training forward and backward (ModuleCacher)")


def _use_fused_adamw(trainer) -> None:
    args = trainer.args
    optim = getattr(args.optim, "value", args.optim)
    if optim not in ("adamw_torch", "adamw_torch_fused") or trainer.optimizer is not None:
        logger.info("Habana's fused AdamW not used: --optim %s", optim)
        return
    fused = importlib.import_module("habana_frameworks.torch.hpex.optimizers").FusedAdamW
    trainer.optimizer_cls_and_kwargs = (fused, {"lr": args.learning_rate, "betas": (args.adam_beta1, args.adam_beta2),
                                                "eps": args.adam_epsilon})


def _use_fused_clip_norm(trainer) -> None:
    if not trainer.args.max_grad_norm:
        return
    fused_cls = importlib.import_module("habana_frameworks.torch.hpex.normalization").FusedClipNorm
    clipper = {}

    def fused_clip_grad_norm(model):
        params = [p for p in model.parameters() if p.requires_grad]
        if "fused" not in clipper:
            clipper["fused"] = fused_cls(params, trainer.args.max_grad_norm)
        return clipper["fused"].clip_norm(params)

    trainer._clip_grad_norm = fused_clip_grad_norm
