#!/usr/bin/env python
"""Direct Preference Optimization (DPO), the PPO alternative of TRL's and optimum-habana's DPO examples, with TRL's DPOTrainer.

Trains a causal LM directly on preference pairs, from any pair schema the toolkit reads. LoRA is the
default. Under LoRA the reference model is the policy with its adapter disabled, so there is no second
copy of the weights in memory. Full fine-tuning (``--use_peft False``) keeps a reference copy, or with
``--precompute_ref_log_probs`` computes the reference log-probs once before training and frees the copy.
TRL's ``--beta``, ``--loss_type`` (sigmoid, ipo, hinge, ...), ``--max_length`` and the rest of ``DPOConfig``
apply. The held-out pairs are evaluated before and after training; reward accuracy and the chosen-minus-
rejected margin go to ``eval_results.json`` and ``all_results.json``.

    python dpo.py --model_name_or_path ./sft_sanity_merged --dataset_name lvwerra/stack-exchange-paired \\
        --output_dir ./dpo_sanity --beta 0.1 --learning_rate 5e-5 --max_steps 100 \\
        --per_device_train_batch_size 4 --gradient_accumulation_steps 2 --bf16 [--use_habana --use_lazy_mode]
"""

from __future__ import annotations

from rlhfkit.cli import script_cli
from rlhfkit.device import DeviceArguments
from rlhfkit.modelargs import ModelArguments
from rlhfkit.preference_training import ScriptArguments
from rlhfkit.training import trainer_parser


def make_dpo_parser():
    from trl import DPOConfig

    return trainer_parser(ScriptArguments, DPOConfig, __doc__)


def main(script_args: ScriptArguments, model_args: ModelArguments, device_args: DeviceArguments, training_args):
    from rlhfkit.preference_training import run

    return run("dpo", script_args, model_args, device_args, training_args)


cli = script_cli(make_dpo_parser, main)


if __name__ == "__main__":
    cli()
