#!/usr/bin/env python
"""REINFORCE Leave-One-Out (RLOO): critic-free RL with TRL's RLOOTrainer (TRL's ``rloo.py``, its flags).

As grpo.py, with RLOO's baseline: each of a prompt's ``--num_generations`` completions is judged against the mean
reward of the *other* completions of its group. TRL's ``RLOOConfig`` applies (``--beta``, KL to the reference,
default 0.05; ``--normalize_advantages``, ``--reward_clip_range``, ``--num_iterations``, ``--epsilon``, ...). The
rewards, prompts, LoRA default, devices, faults and results are grpo.py's.

    python rloo.py --model_name_or_path ./sft_sanity_merged --reward_model_name ./rm_sanity_merged \\
        --output_dir ./rloo_sanity --num_generations 4 --per_device_train_batch_size 8 \\
        --max_completion_length 64 --max_steps 100 --bf16 [--use_habana --use_lazy_mode]
"""

from __future__ import annotations

from rlhfkit.cli import script_cli
from rlhfkit.critic_free import ScriptArguments
from rlhfkit.device import DeviceArguments
from rlhfkit.modelargs import ModelArguments


def make_rloo_parser():
    from trl import RLOOConfig

    from rlhfkit.critic_free import make_parser

    return make_parser(RLOOConfig, __doc__)


def main(script_args: ScriptArguments, model_args: ModelArguments, device_args: DeviceArguments, training_args):
    from rlhfkit.critic_free import run

    return run("rloo", script_args, model_args, device_args, training_args)


cli = script_cli(make_rloo_parser, main)


if __name__ == "__main__":
    cli()
