#!/usr/bin/env python
"""Kahneman-Tversky Optimization (KTO): preference training from unpaired answers, each labelled desirable or
not, with TRL's KTOTrainer (TRL's ``kto.py`` example, the same flags).

Takes unpaired preference data: ``prompt`` / ``completion`` / ``label``, ``messages`` / ``label`` (LLaMA-Factory's
``kto_en_demo.json``), ShareGPT ``conversations`` / ``label``, or any preference pairs, each split into a
desirable (chosen) and an undesirable (rejected) example as TRL does. LoRA is the default; the reference model is
then the policy with its adapter disabled (no second copy of the weights). Full fine-tuning (``--use_peft False``)
keeps a reference copy, or with ``--precompute_ref_log_probs`` computes the reference log-probs once. TRL's
``--beta``, ``--desirable_weight``, ``--undesirable_weight``, ``--loss_type`` and the rest of ``KTOConfig`` apply;
``--per_device_train_batch_size`` must be at least 2 (the KL term pairs each prompt with another's answer). The
held-out examples are evaluated before and after training (``rewards/chosen``, ``rewards/rejected``,
``rewards/margins``, ``kl``) into ``eval_results.json`` and ``all_results.json``.

    python kto.py --model_name_or_path ./sft_sanity_merged --dataset_name kto_en_demo.json \\
        --output_dir ./kto_sanity --beta 0.1 --learning_rate 5e-5 --max_steps 100 \\
        --per_device_train_batch_size 4 --gradient_accumulation_steps 2 --bf16 [--use_habana --use_lazy_mode]
"""

from __future__ import annotations

from rlhfkit.cli import script_cli
from rlhfkit.device import DeviceArguments
from rlhfkit.errors import UserError
from rlhfkit.modelargs import ModelArguments
from rlhfkit.preference_training import ScriptArguments
from rlhfkit.training import trainer_parser


def validate(training_args) -> None:
    """KTO's own constraints, checked before any model loads."""
    if training_args.loss_type != "apo_zero_unpaired" and training_args.per_device_train_batch_size < 2:
        raise UserError(f"--per_device_train_batch_size {training_args.per_device_train_batch_size}: KTO estimates its "
                        "KL term by pairing each prompt with another example's answer in the batch; use 2 or more")


def make_kto_parser():
    from trl import KTOConfig

    return trainer_parser(ScriptArguments, KTOConfig, __doc__)


def main(script_args: ScriptArguments, model_args: ModelArguments, device_args: DeviceArguments, training_args):
    from rlhfkit.preference_training import run

    validate(training_args)
    return run("kto", script_args, model_args, device_args, training_args)


cli = script_cli(make_kto_parser, main)


if __name__ == "__main__":
    cli()
