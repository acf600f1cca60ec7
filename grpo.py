#!/usr/bin/env python
"""Group Relative Policy Optimization (GRPO): critic-free RL with TRL's GRPOTrainer (TRL's ``grpo.py``, its flags).

For each prompt the policy samples ``--num_generations`` completions; each completion's advantage is its reward
against its group's (mean, scaled per ``--scale_rewards``), so no value model is trained. TRL's loss variants
apply through ``--loss_type`` (``dapo``, TRL's default; ``grpo``, ``dr_grpo``, ``bnpo``, ``cispo``, ``sapo``, ...),
with ``--beta`` (KL to the reference; 0.04 here, TRL's 0 loads none), ``--epsilon`` / ``--epsilon_high``,
``--num_iterations``, ``--max_completion_length``, ``--temperature`` and the rest of ``GRPOConfig``; on CUDA,
``--use_vllm --vllm_mode colocate|server`` generates with vLLM (``pip install vllm``).

Rewards: a reward model (``--reward_model_name``, scored as ppo.py scores it; its own tokenizer is handled) and/or
rules (``--reward_function MODULE:FUNC`` or ``FILE.py:FUNC``, several at once), weighted by ``--reward_weights``.
Prompts come from any prompt schema the toolkit reads, formatted as ppo.py formats them (``--prompt_format``); by
default the ``data/rl`` split of the embedded toy task. LoRA is the default (the reference, when ``--beta`` > 0,
is the adapter-disabled policy), at 3e-4 with ``--beta 0.04`` (TRL: 1e-6 and 0); writes the adapter or full model
to ``--output_dir`` with ``all_results.json`` (episodes/s, peak memory) and TensorBoard logs (``reward``,
``rewards/<name>/mean``, ``kl``, ``clip_ratio``, ...).

    python grpo.py --model_name_or_path ./sft_sanity_merged --reward_model_name ./rm_sanity_merged \\
        --output_dir ./grpo_sanity --num_generations 8 --per_device_train_batch_size 8 \\
        --max_completion_length 64 --max_steps 100 --bf16 [--use_habana --use_lazy_mode]
"""

from __future__ import annotations

from rlhfkit.cli import script_cli
from rlhfkit.critic_free import ScriptArguments
from rlhfkit.device import DeviceArguments
from rlhfkit.modelargs import ModelArguments


def make_grpo_parser():
    from trl import GRPOConfig

    from rlhfkit.critic_free import GRPO_BETA, make_parser

    return make_parser(GRPOConfig, __doc__, defaults={"beta": GRPO_BETA})


def main(script_args: ScriptArguments, model_args: ModelArguments, device_args: DeviceArguments, training_args):
    from rlhfkit.critic_free import run

    return run("grpo", script_args, model_args, device_args, training_args)


cli = script_cli(make_grpo_parser, main)


if __name__ == "__main__":
    cli()
