"""The alias table: other tools' flag names map to ours, each use is logged, and a conflict is an error."""

import logging

import pytest

from rlhfkit.aliases import ALIASES
from rlhfkit.device import DeviceArguments
from rlhfkit.errors import UserError
from rlhfkit.ppo.config import PPOArguments


def test_every_alias_and_its_target_are_flags():
    declared = set(PPOArguments.__dataclass_fields__) | set(DeviceArguments.__dataclass_fields__)
    for name, alias in ALIASES.items():
        assert name in declared and alias.target in declared, name


def test_total_episodes_sets_steps_and_says_how(caplog):
    args = PPOArguments(reward_function="toy", total_episodes=100, batch_size=8)
    with caplog.at_level(logging.INFO):
        assert args.resolve_steps(num_prompts=1000, num_processes=2) == 7
    assert "--total_episodes 100 (TRL's name) sets --steps 7 (16 episodes per step)" in caplog.text
    with pytest.raises(UserError, match="--total_episodes 100 and --steps 3 disagree"):
        PPOArguments(reward_function="toy", total_episodes=100, steps=3).resolve_steps(1000, 1)


def test_use_habana_means_device_hpu(caplog):
    from rlhfkit import aliases

    with caplog.at_level(logging.INFO):
        assert aliases.resolve("use_habana", True, "auto", "auto") == "hpu"
    assert "--use_habana (optimum-habana's flag) sets --device hpu" in caplog.text
    assert aliases.resolve("use_habana", False, "cpu", "auto") == "cpu"
    with pytest.raises(UserError, match="--use_habana and --device cuda disagree"):
        aliases.resolve("use_habana", True, "cuda", "auto")
