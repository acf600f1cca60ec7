"""What dpo.py and kto.py share: TRL's DPOTrainer or KTOTrainer on a policy and its reference, with held-out
metrics before and after training.

Under LoRA the reference is the policy with its adapter disabled (no second copy of the weights), also under
FSDP2 and DeepSpeed ZeRO, except with several DDP processes (see :func:`reference_model`). Full fine-tuning
(``--use_peft False``) keeps a reference copy, or with ``--precompute_ref_log_probs`` computes the reference
log-probs once before training and frees it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from rlhfkit.errors import UserError
from rlhfkit.faults import RunArguments
from rlhfkit.hpu import HPUGraphArguments, StaticShapeArguments
from rlhfkit.pairs import PairDataArguments

logger = logging.getLogger(__name__)


@dataclass
class ScriptArguments(PairDataArguments, RunArguments, StaticShapeArguments, HPUGraphArguments):
    """dpo.py's and kto.py's own flags: the data, the run's fault handling, Gaudi's static shapes and graphs."""

# the data kind each trainer takes, and the held-out metrics its summary line reports
DATA_KIND = {"dpo": "preference", "kto": "unpaired"}
SUMMARY = {
    "dpo": (("reward accuracy", "rewards/accuracies"), ("margin", "rewards/margins")),
    "kto": (("chosen reward", "rewards/chosen"), ("rejected reward", "rewards/rejected"), ("kl", "kl")),
}


def held_out_metrics(trainer, prefix: str) -> dict:
    """TRL's evaluation metrics (rewards/..., logps, kl, loss) with ``eval_`` replaced by ``prefix``; TRL attaches
    its reward metrics only under the plain ``eval`` prefix, hence the renaming. Keys without the ``eval_`` prefix
    (``epoch``) are left out: they are not held-out metrics."""
    metrics = trainer.evaluate()
    return {prefix + k[len("eval"):]: v for k, v in metrics.items()
            if k.startswith("eval_") and not k.endswith(("_runtime", "_per_second"))}


def evaluate_before_first_step(trainer, results: dict):
    """A callback that puts the held-out metrics of the untrained model into ``results`` (``eval_before_*``) as
    training begins, once the model is prepared."""
    from transformers import TrainerCallback

    class EvaluateBeforeFirstStep(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if state.global_step == 0:
                results.update(held_out_metrics(trainer, "eval_before"))

    return EvaluateBeforeFirstStep()


def sharded_launch(training_args) -> bool:
    """Whether the processes shard the model (FSDP, DeepSpeed ZeRO), as launched (``accelerate launch`` with such
    a config, or the Trainer's ``--fsdp`` / ``--deepspeed``), before the trainer builds its Accelerator."""
    import os

    launched = any(os.environ.get(name, "false").lower() in ("1", "true", "yes")
                   for name in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"))
    return launched or bool(training_args.deepspeed) or bool(training_args.fsdp)


def reference_model(model_name: str, model_args, training_args, peft_config, use_hpu_graphs: bool):
    """The reference model to hand the trainer: None (LoRA: the adapter-disabled policy; full fine-tuning: TRL
    makes its copy or precomputes the log-probs), or a frozen copy under LoRA with several DDP processes."""
    from rlhfkit import models

    ref_model = None
    if peft_config is not None and training_args.world_size > 1 and not sharded_launch(training_args):
        # Under DDP, PEFT's adapter switch (toggling requires_grad inside the training forward) leaves the
        # adapter's gradients un-averaged: each process trained its own adapter (measured with 2 processes, DPO). A
        # frozen reference copy keeps the processes in step, at the cost of one copy of the base weights.
        # FSDP2 and DeepSpeed ZeRO-2/3 reduce the gradients in their own hooks, which the switch does not
        # disturb: there the adapter-disabled reference trains exactly as one process does (measured, DPO, 2
        # processes against 1: tests/test_multiprocess.py), and no copy is made.
        ref_model = models.load_causal_lm(model_name, trust_remote_code=training_args.trust_remote_code,
                                          allow_pickle=model_args.allow_pickle, merge_adapter=True)
        ref_model.requires_grad_(False).eval()
    if use_hpu_graphs and peft_config is not None and ref_model is None:
        # the reference pass runs the same module with its adapter switched off: a captured graph would replay
        # the adapter-on computation, and the reference would silently equal the policy
        raise UserError("--use_hpu_graphs with LoRA: the reference pass disables the adapter, which a captured "
                        "HPU graph would not see; use --use_peft False (a separate reference) or drop the flag")
    return ref_model


def check_reference(trainer, peft_config) -> None:
    """After the trainer is built: an adapter-disabled reference only where the layout keeps the processes in
    step (one process, FSDP, DeepSpeed); a launch that looked sharded but became plain DDP is refused."""
    from rlhfkit import sharding

    if (peft_config is not None and trainer.ref_model is None and trainer.accelerator.num_processes > 1
            and not sharding.is_sharded(trainer.accelerator)):
        raise UserError(f"LoRA with {trainer.accelerator.num_processes} processes under "
                        f"{sharding.describe(trainer.accelerator)}: the adapter-disabled reference would leave the "
                        "adapter's gradients un-averaged (see rlhfkit/preference_training.py); launch with DDP "
                        "(a reference copy is made) or a sharded config (FSDP, DeepSpeed)")


def run(kind: str, script_args, model_args, device_args, training_args) -> dict:
    """Train and evaluate with TRL's trainer for ``kind`` ("dpo" or "kto"); the results as written to
    ``all_results.json``."""
    from rlhfkit import device, models
    from rlhfkit.pairs import load_pairs
    from rlhfkit.results import write_results
    from rlhfkit.training import make_trainer, open_run, train_and_save, will_train

    info, model_name, tokenizer_name, tokenizer = open_run(training_args, device_args, script_args, model_args,
                                                           "the trained policy")
    train, evaluation = load_pairs(script_args, training_args.seed, tokenizer, training_args.max_length,
                                   DATA_KIND[kind])
    model = models.load_causal_lm(model_name, trust_remote_code=training_args.trust_remote_code,
                                  allow_pickle=model_args.allow_pickle, merge_adapter=True)
    models.check_vocabulary(model, tokenizer, model_name, tokenizer_name)
    peft_config = model_args.lora_config("CAUSAL_LM")
    ref_model = reference_model(model_name, model_args, training_args, peft_config, script_args.use_hpu_graphs)
    trainer, shapes = make_trainer(kind, info, training_args, script_args, fuse_lora=model_args.fuse_lora,
                                   model=model, ref_model=ref_model, train_dataset=train, eval_dataset=evaluation,
                                   processing_class=tokenizer, peft_config=peft_config)
    check_reference(trainer, peft_config)
    held = models.count_parameters(trainer.model)
    reference = "adapter disabled (no copy)" if trainer.ref_model is None and peft_config else (
        "precomputed log-probs" if trainer.ref_model is None else
        "separate copy" + (" (several DDP processes: see rlhfkit/preference_training.py)" if ref_model is not None
                           else ""))
    logger.info("policy %s: %d parameters held, %d trainable; reference: %s", model_name, held,
                models.count_parameters(trainer.model, trainable_only=True), reference)

    results = {"device": device.describe(info), "model": model_name, "use_peft": bool(peft_config),
               "reference": reference}
    training = will_train(training_args)
    if training and (trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled):
        # transformers 5.24 cannot evaluate a sharded model before train(): under FSDP2 evaluate() prepares the
        # model alone, which accelerate refuses ("a model and optimizer must be passed together"); under ZeRO-2
        # it builds a DeepSpeed inference engine ("ZeRO inference only makes sense with ZeRO Stage 3"); under
        # ZeRO-3 train() then keeps that inference engine and has none to call backward on. The held-out
        # metrics before training are taken instead once train() has prepared the model, before its first step
        # (as --eval_on_start would).
        trainer.add_callback(evaluate_before_first_step(trainer, results))
    else:
        results.update(held_out_metrics(trainer, "eval_before"))
    if training:
        results.update(train_and_save(trainer, training_args, script_args))
        results.update(shapes.results())
    metrics = held_out_metrics(trainer, "eval")
    write_results(training_args.output_dir, "eval", metrics)
    results.update(metrics)
    write_results(training_args.output_dir, "all", results)
    nan = float("nan")
    logger.info("held-out %s: %s", "pairs" if kind == "dpo" else "examples", ", ".join(
        f"{label} {results.get('eval_' + key, nan):.3f} (before training {results.get('eval_before_' + key, nan):.3f})"
        for label, key in SUMMARY[kind]))
    return results
