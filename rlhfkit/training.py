"""What the Trainer-based scripts (sft, reward_modeling, dpo, kto, grpo, rloo) share: defaults, the opening of ``main``, the
trainer (TRL's on every device; on Gaudi, :func:`rlhfkit.hpu.gaudi_trainer`), resuming, train-and-save."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from rlhfkit.errors import UserError

logger = logging.getLogger(__name__)

# Our defaults where TRL's suit large GPU runs but not a toolkit that must also run small models on CPU:
# precision follows the device (bf16 None: rlhfkit.device.auto_precision; TRL's bf16=True fails on a CPU without
# --use_cpu and is slow on one without native bfloat16), gradient checkpointing is opt-in (it recomputes the
# forward pass: about a third more compute, worth it only when memory is short), TensorBoard logs are on.
TRAINER_DEFAULTS = {"bf16": None, "gradient_checkpointing": False, "report_to": ["tensorboard"], "logging_steps": 10}
# Batches stay random by default. Grouping rows of similar length (--train_sampling_strategy group_by_length)
# cut SFT's padding and raised its tokens/s 1.45x on CPU, but on the toy task it also correlated each batch's
# content with its length and halved what SFT gained on the gold judge (docs/benchmarks.md): opt-in only.


def trainer_parser(script_cls, config_cls, doc: str, prepare=None, defaults: dict | None = None):
    """The flag parser of a Trainer script: its own arguments (``script_cls``), the model's, the device switch and
    TRL's config class (``config_cls``), with :data:`TRAINER_DEFAULTS` (and the script's ``defaults``); the device
    flags set the config's too (``prepare(namespace)`` replaces that step: it must call
    :func:`rlhfkit.device.configure_training_args` itself)."""
    from rlhfkit.cli import make_parser
    from rlhfkit.device import DeviceArguments, configure_training_args
    from rlhfkit.modelargs import ModelArguments

    return make_parser((script_cls, ModelArguments, DeviceArguments, config_cls), description=doc,
                       prepare=prepare or (lambda ns: configure_training_args(ns, ns)),
                       defaults={**TRAINER_DEFAULTS, **(defaults or {})})


# each Trainer script's TRL trainer and config (optimum-habana's Gaudi classes prefix them with "Gaudi")
TRL_TRAINERS = {"sft": "SFTTrainer", "reward": "RewardTrainer", "dpo": "DPOTrainer", "kto": "KTOTrainer",
                "grpo": "GRPOTrainer", "rloo": "RLOOTrainer"}
TRL_CONFIGS = {"sft": "SFTConfig", "reward": "RewardConfig", "dpo": "DPOConfig", "kto": "KTOConfig",
               "grpo": "GRPOConfig", "rloo": "RLOOConfig"}

TRAINER_CHECKPOINT_MARKER = "trainer_state.json"  # the Trainer writes it last into a checkpoint


def newest_complete_checkpoint(output_dir: str) -> str | None:
    from rlhfkit import checkpoints

    return checkpoints.newest_complete(output_dir, TRAINER_CHECKPOINT_MARKER)


def resolve_resume(training_args) -> str | None:
    """``--resume_from_checkpoint`` as a path (``true`` / ``last``: the newest complete checkpoint)."""
    from rlhfkit import checkpoints

    return checkpoints.resolve(training_args.resume_from_checkpoint, training_args.output_dir,
                               TRAINER_CHECKPOINT_MARKER)


def will_train(training_args) -> bool:
    """--do_train, or neither --do_train nor --do_eval (training is the default)."""
    return bool(training_args.do_train or not training_args.do_eval)


def open_run(training_args, device_args, script_args, model_args, what: str):
    """The opening every Trainer script (sft, reward_modeling, dpo, kto) shares, before any data or weights load:
    ``--output_dir`` required (``what``: what it will hold), the device and precision, the static shapes, the
    seed, the resume target and the output-folder policy; then the model's source checked and its tokenizer
    loaded, with a pad token. Returns (device info, model name, tokenizer name, tokenizer)."""
    from transformers import set_seed

    from rlhfkit import hpu, models
    from rlhfkit.device import configure_training_args

    if not training_args.output_dir:
        raise UserError(f"--output_dir is required: where to write {what}")
    info = configure_training_args(training_args, device_args)
    hpu.apply_static_shapes(training_args, script_args)
    hpu.check_training_graphs(training_args, script_args)
    set_seed(training_args.seed)
    prepare_output(training_args, script_args)  # a bad --resume_from_checkpoint or --output_dir fails first
    model_name = models.resolve_name(model_args.model_name_or_path)
    models.check_model_source(model_name)
    tokenizer_name = model_args.tokenizer_name_or_path or model_name
    tokenizer = models.load_tokenizer(tokenizer_name, training_args.trust_remote_code)
    models.ensure_pad_token(tokenizer)
    return info, model_name, tokenizer_name, tokenizer


@dataclass
class TrainingRecord:
    """What a run's training steps ran: the distinct (rows, tokens) shapes of its batches (static shapes keep them
    few) and, with LoRA, how its LoRA layers computed (``--fuse_lora``: calls folded, as products, in PEFT's
    forward)."""

    shapes: set = field(default_factory=set)
    fuse_lora: str | None = None  # the --fuse_lora a model with plain LoRA layers trained with
    lora_calls: dict | None = None  # its LoRA layer calls each way, outside torch.compile'd graphs

    def results(self) -> dict:
        figures = {"train_batch_shapes": sorted([list(s) for s in self.shapes])}
        if self.fuse_lora:
            figures["fuse_lora"] = self.fuse_lora
        if self.lora_calls is not None:
            figures["lora_train_calls"] = dict(self.lora_calls)
        return figures


def fsdp_on_cpu(info) -> None:
    """Let an FSDP launch (``distributed_type: FSDP``, e.g. configs/accelerate/cpu_fsdp2.yaml) shard on CPU: the
    process group the Trainer's arguments set up (``use_cpu``: MULTI_CPU) relabelled before the trainer builds its
    Accelerator (:func:`rlhfkit.sharding.fsdp_on_cpu`), which then takes the FSDP plugin from the launch
    environment; otherwise accelerate 1.15 would silently train with DDP (``distributed: ddp`` in the results)."""
    from accelerate import PartialState

    from rlhfkit import sharding

    if info.type == "cpu" and sharding.sharded_launch() == "fsdp" and sharding.fsdp_on_cpu(PartialState()):
        logger.info("FSDP launch on CPU: sharding over gloo (accelerate would otherwise fall back to DDP)")


def make_trainer(kind: str, info, training_args, script_args, fuse_lora: str = "off", **kwargs):
    """(trainer, :class:`TrainingRecord` it fills): TRL's trainer for ``kind`` built with ``kwargs`` (model,
    datasets, processing_class, peft_config ...); on Gaudi, the one :func:`rlhfkit.hpu.gaudi_trainer` picks, with
    its hooks. Its training computes the LoRA layers as ``fuse_lora`` says (:func:`fuse_lora_in_training`)."""
    from rlhfkit import hpu

    fsdp_on_cpu(info)
    if info.type == "hpu":
        trainer = hpu.gaudi_trainer(kind, info, training_args, script_args.use_hpu_graphs, **kwargs)
    else:
        import trl

        hpu.warn_graphs_off_gaudi(info, script_args.use_hpu_graphs)
        trainer = getattr(trl, TRL_TRAINERS[kind])(args=training_args, **kwargs)
    shapes = TrainingRecord()
    fuse_lora_in_training(trainer, fuse_lora, shapes)
    if hasattr(trainer, "_generate_and_score_completions"):  # GRPO / RLOO: the batch exists once generated
        prepare_inputs = trainer._prepare_inputs

        def recording_prepare(generation_batch):
            inputs = prepare_inputs(generation_batch)
            if "completion_ids" in inputs:
                prompt, completion = inputs["prompt_ids"].shape, inputs["completion_ids"].shape
                shapes.shapes.add((prompt[0], prompt[1] + completion[1]))
            return inputs

        trainer._prepare_inputs = recording_prepare
        return trainer, shapes
    training_step = trainer.training_step

    def recording_step(model, inputs, *args, **kwargs):
        ids = inputs.get("input_ids") if hasattr(inputs, "get") else None
        if ids is not None:
            shapes.shapes.add(tuple(ids.shape))
        return training_step(model, inputs, *args, **kwargs)

    trainer.training_step = recording_step
    return trainer, shapes


def fuse_lora_in_training(trainer, mode: str, record: TrainingRecord) -> None:
    """Make ``trainer.train`` compute the model's plain LoRA layers as ``mode`` says
    (:func:`rlhfkit.fused_lora.fused`: folded or as one products function, instead of PEFT's forward), for the
    whole of training (the evaluations during it too), counting the calls into ``record``."""
    from torch import nn

    from rlhfkit import fused_lora, sharding

    model = getattr(trainer, "model", None)
    if not isinstance(model, nn.Module):  # a trainer without a model: nothing to compute
        return
    if not any(fused_lora.plain(m, with_dropout=True) for m in model.modules()):
        if any(hasattr(m, "lora_A") for m in model.modules()):  # LoRA, but none that qualifies
            record.fuse_lora = "off: no plain LoRA layer (DoRA, a LoRA bias or several adapters)"
            if mode != "off":
                logger.info("--fuse_lora %s: %s; PEFT's own forward", mode, record.fuse_lora.removeprefix("off: "))
        return
    record.fuse_lora, why = fused_lora.resolve_mode(mode, sharding.is_sharded(trainer.accelerator))
    if why:
        logger.info(why)
    if record.fuse_lora == "off":
        return
    train = trainer.train

    def fused_train(*args, **kwargs):
        with fused_lora.fused(trainer.model, record.fuse_lora) as calls:
            try:
                return train(*args, **kwargs)
            finally:
                record.lora_calls = dict(calls)
                logger.info("LoRA layer calls in training (outside torch.compile'd graphs): %d folded into the "
                            "weight, %d as PEFT's products in one autograd function, %d in PEFT's own forward "
                            "(--fuse_lora %s)", calls["folded"], calls["products"], calls["peft"], record.fuse_lora)

    trainer.train = fused_train


def prepare_output(training_args, run_args) -> str | None:
    """Before any work: the resume target (a bad one is an error) and the output folder policy
    (:func:`rlhfkit.faults.check_output_dir`; an evaluation-only run may write beside an existing model).
    Returns the checkpoint to resume from, if any."""
    from rlhfkit import faults

    resume = resolve_resume(training_args)
    faults.check_output_dir(training_args.output_dir, run_args.overwrite_output_dir,
                            resume is not None or not will_train(training_args))
    return resume


def fault_guard(stop, bad):
    """A Trainer callback: drops a batch whose gradients are not finite (the optimizer step then changes
    nothing) and stops past ``--max_bad_batches``, never saving that state; on a stop signal, saves a
    checkpoint after the current step and stops."""
    from transformers import TrainerCallback

    class FaultGuard(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            if model is not None and bad.check(model.parameters(), state.global_step + 1):
                control.should_training_stop = True

        def on_step_end(self, args, state, control, **kwargs):
            if bad.stopped_at is not None:
                control.should_training_stop, control.should_save = True, False
            elif stop.requested():
                control.should_training_stop, control.should_save = True, True
            return control

    return FaultGuard()


def make_checkpoints_atomic(trainer) -> None:
    """Make the Trainer write each ``checkpoint-N`` into a hidden staging folder and rename it into place once
    complete (the Trainer itself writes into ``checkpoint-N`` directly, so a crash mid-save would leave a folder
    that looks like a checkpoint). Old checkpoints are rotated after the rename, as the Trainer would."""
    import shutil

    from transformers.trainer_utils import rotate_checkpoints

    from rlhfkit import checkpoints

    save_checkpoint, get_output_dir = trainer._save_checkpoint, trainer._get_output_dir

    def atomic_save_checkpoint(model, trial):
        run_dir = get_output_dir(trial=trial)
        name = f"checkpoint-{trainer.state.global_step}"
        staging = os.path.join(run_dir, f".{name}.saving")
        trainer._get_output_dir = lambda trial=None: staging  # every process writes its part there
        try:
            save_checkpoint(model, trial)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)  # a failed save leaves nothing, not half a checkpoint
            raise
        finally:
            trainer._get_output_dir = get_output_dir
        trainer.accelerator.wait_for_everyone()
        if trainer.is_world_process_zero():
            checkpoints.publish(os.path.join(staging, name), os.path.join(run_dir, name))
            shutil.rmtree(staging, ignore_errors=True)
            best = trainer.state.best_model_checkpoint
            if best and best.startswith(staging):
                trainer.state.best_model_checkpoint = os.path.join(run_dir, os.path.basename(best))
            rotate_checkpoints(output_dir=run_dir, save_total_limit=trainer.args.save_total_limit,
                               best_model_checkpoint=trainer.state.best_model_checkpoint, use_mtime=True)
        trainer.accelerator.wait_for_everyone()

    trainer._save_checkpoint = atomic_save_checkpoint


def train_and_save(trainer, training_args, run_args) -> dict:
    """Train (resuming if asked), save the model atomically into output_dir, write train_results.json.

    A stop signal or a diverged loss ends the run with :class:`rlhfkit.errors.RunStopped` instead of a final
    model (see :mod:`rlhfkit.faults`). Returns the train metrics, with trained (non-padding) tokens/s added
    when the trainer counts tokens.
    """
    from rlhfkit import faults, io, sharding
    from rlhfkit.results import peak_memory_per_process, tokens_per_second, write_results

    faults.check_disk_space(training_args.output_dir, faults.needed_bytes(trainer.model))
    stop, bad = faults.StopRequest(), faults.BadBatches(run_args.max_bad_batches)
    trainer.add_callback(fault_guard(stop, bad))
    make_checkpoints_atomic(trainer)
    stop.install()
    try:
        train_result = trainer.train(resume_from_checkpoint=resolve_resume(training_args))
    finally:
        stop.uninstall()
    if bad.stopped_at is not None:
        raise faults.diverged(bad, newest_complete_checkpoint(training_args.output_dir))
    if stop.signum is not None:
        raise faults.stopped_by_signal(stop, trainer.state.global_step,
                                       newest_complete_checkpoint(training_args.output_dir))
    metrics = dict(train_result.metrics)
    metrics.update(tokens_per_second(trainer.state.log_history, metrics.get("train_runtime")))
    metrics.update(peak_memory_per_process())
    metrics["distributed"] = sharding.describe(trainer.accelerator)
    # every process takes part (FSDP / ZeRO-3 gather the weights); the main one writes and publishes
    with io.staging_dir(training_args.output_dir, publish_files=trainer.is_world_process_zero()) as staging:
        trainer.save_model(staging)
    trainer.save_state()
    write_results(training_args.output_dir, "train", metrics)
    return metrics
