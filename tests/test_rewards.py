"""The critic-free trainers' rewards (rlhfkit/rewards.py) and flag checks (rlhfkit/critic_free.py), without a model:
both reward-function conventions, what a bad reward returns, the probe, the group-size and learning-rate checks.
The reward model's path against ppo.py's scorer is in test_grpo.py (it needs the embedded model)."""

from __future__ import annotations

import argparse
import math

import pytest
from conftest import load_script

from rlhfkit import critic_free, rewards
from rlhfkit.errors import UserError
from rlhfkit.modelargs import FULL_LEARNING_RATE, LORA_LEARNING_RATE


def per_example(prompt, response):
    return float(len(response)) + (0.5 if "cat" in prompt else 0.0)


def test_a_per_example_rule_gets_the_plain_prompt_and_each_completion():
    rule = rewards.RuleReward(per_example, "mod:per_example")
    assert not rule.batch and rule.__name__ == "per_example"
    values = rule(["Question: cat?\n\nAnswer:", "Question: dog?\n\nAnswer:"], ["ab", ""],
                  completion_ids=[[1, 2], []], prompt_text=["cat?", "dog?"], trainer_state=None)
    assert values == [2.5, 0.0]
    # without the plain-text column (TRL run with --remove_unused_columns True) the formatted prompt is used
    assert rule(["a cat", "x"], ["", "abc"], completion_ids=[[], [1]]) == [0.5, 3.0]


def test_a_trl_style_rule_gets_the_batch_and_only_the_arguments_it_takes():
    seen = {}

    def lengths(prompts, completions, completion_ids):
        seen.update(prompts=prompts, ids=completion_ids)
        return [len(c) for c in completions]

    def with_kwargs(prompts, completions, **kwargs):
        seen["kwargs"] = sorted(kwargs)
        return (0.25,) * len(completions)

    rule = rewards.RuleReward(lengths, "f.py:lengths")
    assert rule.batch
    assert rule(["p1", "p2"], ["abc", "d"], completion_ids=[[5], [6]], prompt_text=["x", "y"]) == [3.0, 1.0]
    assert seen["prompts"] == ["p1", "p2"] and seen["ids"] == [[5], [6]]
    assert rewards.RuleReward(with_kwargs, "w")(["p"], ["c"], completion_ids=[[1]], prompt_text=["x"]) == [0.25]
    assert seen["kwargs"] == ["completion_ids", "prompt_text"]


def test_none_and_nan_mean_does_not_apply():
    assert rewards.RuleReward(lambda p, r: None, "n")(["p"], ["c"]) == [None]
    assert rewards.RuleReward(lambda p, r: math.nan, "n")(["p"], ["c"]) == [None]


@pytest.mark.parametrize(("function", "fragments"), [
    (lambda p, r: "1.0", ("returned str", "not a number")),
    (lambda p, r: True, ("returned bool",)),
    (lambda p, r: [1.0], ("returned list",)),
    (lambda prompts, completions: 1.0, ("returned float", "not a list")),
    (lambda prompts, completions: [1.0], ("returned 1 rewards for 2 completions",)),
    (lambda prompts, completions: ["a", "b"], ("returned str",)),
])
def test_a_bad_return_is_one_error_naming_the_rule(function, fragments):
    with pytest.raises(UserError) as err:
        rewards.RuleReward(function, "my.module:score")(["p", "q"], ["c", "d"], completion_ids=[[1], [2]])
    assert "--reward_function my.module:score" in str(err.value)
    for fragment in fragments:
        assert fragment in str(err.value)


def test_the_probe_refuses_a_rule_that_fails_before_training(tmp_path):
    def crashes(prompt, response):
        return 1.0 / len(response)

    with pytest.raises(UserError, match="failed on an empty completion of the first prompt: ZeroDivisionError"):
        rewards.probe([rewards.RuleReward(crashes, "f.py:crashes")], "Question: hi", "hi")
    rewards.probe([rewards.RuleReward(per_example, "ok")], "Question: hi", "hi")  # a sound rule passes


def test_rules_load_from_a_file_a_module_or_the_toy_judge(tmp_path):
    path = tmp_path / "rules.py"
    path.write_text("def score(prompt, response):\n    return 1.0\n\nraise_me = 3\n", encoding="utf-8")
    assert rewards.load_rule(f"{path}:score")(["p"], ["c"]) == [1.0]
    assert rewards.load_rule("toy")(["How was the pizza?"], ["It was great."]) == [-1.0]  # never names the item
    assert rewards.load_rule("math:sqrt").__name__ == "sqrt"
    broken = tmp_path / "broken.py"
    broken.write_text("def score(prompt, response) return 1\n", encoding="utf-8")
    for spec, fragment in ((f"{path}:missing", "has no function missing"), ("no_such_module_xyz:f", "cannot import"),
                           (f"{broken}:score", "importing"), ("nocolon", "use MODULE:FUNCTION")):
        with pytest.raises(UserError, match=fragment):
            rewards.load_rule(spec)


def test_a_run_needs_a_reward():
    with pytest.raises(UserError, match="--reward_model_name .* --reward_function"):
        rewards.RewardArguments().check()
    rewards.RewardArguments(reward_function=["toy"]).check()


def _namespace(**values):
    base = dict(per_device_train_batch_size=8, gradient_accumulation_steps=1, steps_per_generation=None,
                generation_batch_size=None, num_generations=8, learning_rate=None, use_peft=True)
    return argparse.Namespace(**{**base, **values})


def test_the_group_check_names_the_flags_that_make_the_batch(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    critic_free.check_groups(_namespace())  # 8 completions, one group of 8
    critic_free.check_groups(_namespace(per_device_train_batch_size=4, gradient_accumulation_steps=2))
    with pytest.raises(UserError) as err:
        critic_free.check_groups(_namespace(num_generations=3))
    assert "--num_generations 3 does not divide the generation batch of 8 completions" in str(err.value)
    assert "--per_device_train_batch_size 8 x 1 process(es) x --gradient_accumulation_steps 1" in str(err.value)
    monkeypatch.setenv("WORLD_SIZE", "2")
    critic_free.check_groups(_namespace(per_device_train_batch_size=4))  # 4 x 2 processes
    with pytest.raises(UserError, match="--generation_batch_size"):
        critic_free.check_groups(_namespace(generation_batch_size=12))
    with pytest.raises(UserError, match="at least 2 completions"):
        critic_free.check_groups(_namespace(num_generations=1))


def test_the_learning_rate_default_follows_lora_or_full_fine_tuning():
    for use_peft, expected in ((True, LORA_LEARNING_RATE), (False, FULL_LEARNING_RATE)):
        namespace = _namespace(use_peft=use_peft)
        critic_free.learning_rate_default(namespace)
        assert namespace.learning_rate == expected
    given = _namespace(learning_rate=1e-6)
    critic_free.learning_rate_default(given)
    assert given.learning_rate == 1e-6


def test_grpo_s_kl_coefficient_defaults_to_0_04_and_a_config_or_flag_sets_it(tmp_path):
    """grpo.py's --beta is 0.04 unless given (TRL's 0 drifted at the toolkit's learning rate); a --config file and
    the command line set it as any flag; rloo.py keeps TRL's RLOO default."""
    parser = load_script("grpo.py").make_grpo_parser()
    common = ["--output_dir", str(tmp_path / "out"), "--reward_function", "toy"]
    training_args = parser.parse_args_and_config(common)[-1]
    assert training_args.beta == critic_free.GRPO_BETA == 0.04
    config = tmp_path / "grpo.yaml"
    config.write_text("beta: 0.0\n", encoding="utf-8")
    assert parser.parse_args_and_config([*common, "--config", str(config)])[-1].beta == 0.0
    assert parser.parse_args_and_config([*common, "--config", str(config), "--beta", "0.1"])[-1].beta == 0.1
    rloo = load_script("rloo.py").make_rloo_parser()
    assert rloo.parse_args_and_config(common)[-1].beta == 0.05
