"""What the Trainer-based scripts (sft, reward_modeling, dpo) share: defaults, resuming, train-and-save."""

from __future__ import annotations

import os

from rlhfkit.errors import UserError

# Our defaults where TRL's suit large GPU runs but not a toolkit that must also run small models on CPU:
# precision is explicit (--bf16/--fp16), gradient checkpointing is opt-in, TensorBoard logs are on.
TRAINER_DEFAULTS = {"bf16": False, "gradient_checkpointing": False, "report_to": ["tensorboard"], "logging_steps": 10}


def resolve_resume(training_args) -> str | None:
    """``--resume_from_checkpoint`` as a path, or ``true``/``last`` for the newest checkpoint in output_dir."""
    value = training_args.resume_from_checkpoint
    if value is None:
        return None
    if value.lower() in ("true", "last", "latest"):
        from transformers.trainer_utils import get_last_checkpoint

        last = get_last_checkpoint(training_args.output_dir) if os.path.isdir(training_args.output_dir) else None
        if last is None:
            raise UserError(f"--resume_from_checkpoint {value}: no checkpoint-* folder in {training_args.output_dir}")
        return last
    if not os.path.isdir(value):
        raise UserError(f"--resume_from_checkpoint {value} is not a folder: pass a checkpoint-* folder or 'last'")
    return value


def train_and_save(trainer, training_args) -> dict:
    """Train (resuming if asked), save the model atomically into output_dir, write train_results.json.

    Returns the train metrics, with trained (non-padding) tokens/s added when the trainer counts tokens.
    """
    from rlhfkit import io
    from rlhfkit.results import tokens_per_second, write_results

    train_result = trainer.train(resume_from_checkpoint=resolve_resume(training_args))
    metrics = dict(train_result.metrics)
    metrics.update(tokens_per_second(trainer.state.log_history, metrics.get("train_runtime")))
    with io.staging_dir(training_args.output_dir) as staging:
        trainer.save_model(staging)
    trainer.save_state()
    write_results(training_args.output_dir, "train", metrics)
    return metrics
