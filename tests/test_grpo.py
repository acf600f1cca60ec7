"""grpo.py and rloo.py end to end (TRL's GRPOTrainer / RLOOTrainer behind the toolkit's rewards, prompts and runs).

* The reward model scores GRPO's completions exactly as ppo.py's scorer scores the same episodes, and a reward
  model of another vocabulary scores the decoded text as reward_modeling.py trained it.
* stories260K (a real tiny Llama with its own tokenizer) with two rules at once, one in each convention
  (ppo.py's ``f(prompt, response)`` and TRL's ``f(prompts, completions, **kwargs)``), weighted; RLOO with the
  toy judge; a reward model with its own tokenizer.
* Bad input is one line, exit 2, nothing written.

That GRPO raises the gold judge above the base and the SFT model on held-out prompts, against the pipeline's reward
model, is checked by the pipeline's own run (tests/test_pipeline.py, ``--with-grpo``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO, assert_ok, assert_user_error, fixture_path, read_json, run_script

pytestmark = pytest.mark.slow  # every test here loads a model or runs a script

GRPO, RLOO = str(REPO / "grpo.py"), str(REPO / "rloo.py")
QUIET = ["--save_strategy", "no", "--disable_tqdm", "True", "--report_to", "none", "--bf16", "False",
         "--logging_steps", "1"]
SMALL = ["--per_device_train_batch_size", "8", "--num_generations", "4", "--max_completion_length", "16", *QUIET]
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
RULES = '''import re


def cheerful(prompt, response):
    """ppo.py's convention: one point per 'happy', 'fun' or 'smiled'."""
    words = re.findall(r"[a-z]+", response.lower())
    return float(sum(words.count(w) for w in ("happy", "fun", "smiled")))


def brevity(prompts, completions, completion_ids, **kwargs):
    """TRL's convention: shorter completions score higher; the plain prompt text arrives as a column."""
    assert len(kwargs["prompt_text"]) == len(completions)
    return [-len(ids) / 16 for ids in completion_ids]


def words(prompt, response):
    return "many"
'''


def _stories_prompts(folder: Path) -> Path:
    path = folder / "stories.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(32):
            handle.write(json.dumps({"prompt": f"Once upon a time, child {i} went to the park and"}) + "\n")
    return path


@pytest.fixture(scope="module")
def rules(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("rules") / "rules.py"
    path.write_text(RULES, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------- scoring as ppo.py
def test_the_reward_model_scores_as_ppo_does(embedded_root, reward_model):
    """The same episodes (prompt ids + completion ids, some stopped by EOS, some cut off) through ModelReward, as
    GRPOTrainer calls it, and through ppo.py's RewardModelScorer on padded tensors: the same scores."""
    import torch

    from rlhfkit import models, rewards, sampling, scoring

    tokenizer = models.load_tokenizer(str(embedded_root / "model"))
    model, rm_tokenizer = scoring.load_reward_model(reward_model, None, tokenizer, torch.float32, "cpu")
    scorer = scoring.RewardModelScorer(model, rm_tokenizer, tokenizer, batch_size=3)
    prompts = ["Question: How was the red bicycle?\n\nAnswer:", "Question: Describe the lamp.\n\nAnswer:"] * 2
    eos = tokenizer.eos_token_id
    completions = [[300, 301, eos], [302, 303, 304, 305], [306, eos], [307]]
    reward = rewards.ModelReward(scorer, tokenizer, [eos])
    got = reward(prompts, ["x"] * 4, completions)

    query_ids = tokenizer(prompts)["input_ids"]
    queries, query_mask = sampling.left_pad(query_ids, tokenizer.pad_token_id)
    width = max(map(len, completions))
    responses = torch.full((4, width), tokenizer.pad_token_id)
    response_mask = torch.zeros((4, width), dtype=torch.long)
    for i, row in enumerate(completions):
        responses[i, : len(row)], response_mask[i, : len(row)] = torch.tensor(row), 1
    stopped = torch.tensor([row[-1] == eos for row in completions])
    expected = scorer(prompts, queries, query_mask, responses, response_mask, stopped, None)
    assert got == pytest.approx(expected.tolist(), abs=1e-5)
    assert len(set(round(v, 4) for v in got)) == 4  # four different episodes, four different scores


def test_a_reward_model_of_another_vocabulary_scores_the_text_it_was_trained_on(embedded_root, reward_model):
    """stories260K's tokenizer as the policy's: the episode is decoded and scored as prompt + completion (+ the
    reward model's EOS when the policy stopped), as reward_modeling.py trained it."""
    import torch

    from rlhfkit import models, rewards, scoring

    policy_tokenizer = models.load_tokenizer(str(fixture_path("models", "stories260K")))
    model, rm_tokenizer = scoring.load_reward_model(reward_model, None, policy_tokenizer, torch.float32, "cpu")
    scorer = scoring.RewardModelScorer(model, rm_tokenizer, policy_tokenizer)
    assert not scorer.reuse_ids
    prompt = "Question: How was the red bicycle?\n\nAnswer:"
    answer = policy_tokenizer(" It was great.", add_special_tokens=False)["input_ids"]
    eos = policy_tokenizer.eos_token_id
    got = rewards.ModelReward(scorer, policy_tokenizer, [eos])([prompt, prompt], ["", ""], [answer + [eos], answer])
    text = policy_tokenizer.decode(policy_tokenizer(prompt)["input_ids"] + answer, skip_special_tokens=True)
    expected = scoring.score_texts(model, rm_tokenizer, [text + rm_tokenizer.eos_token, text])
    assert got == pytest.approx(expected, abs=1e-5)


# ------------------------------------------------------------------------------------------------ runs
def test_two_rules_in_both_conventions_train_stories260k(rules, tmp_path):
    out = tmp_path / "out"
    result = run_script(GRPO, "--model_name_or_path", str(fixture_path("models", "stories260K")), "--dataset_name",
                        str(_stories_prompts(tmp_path)), "--prompt_format", "raw", "--output_dir", str(out),
                        "--reward_function", f"{rules}:cheerful", f"{rules}:brevity", "--reward_weights", "1", "0.5",
                        "--max_steps", "4", *SMALL, env=ONE_THREAD)
    assert_ok(result)
    results = read_json(out / "all_results.json")
    assert results["train_episodes"] == 4 * 8 and results["train_episodes_per_second"] > 0
    assert results["rewards"] == f"1 x {rules}:cheerful, 0.5 x {rules}:brevity"
    assert results["use_peft"] is True and len(results["peak_rss_mib_per_process"]) == 1
    assert results["train_batch_shapes"] and all(rows == 8 for rows, _ in results["train_batch_shapes"])
    history = read_json(out / "trainer_state.json")["log_history"]
    steps = [h for h in history if "rewards/brevity/mean" in h]
    assert len(steps) == 4 and all(h["rewards/brevity/mean"] < 0 for h in steps)
    assert all("rewards/cheerful/mean" in h for h in steps)
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert "--learning_rate 0.0003 (the default for LoRA" in result.stderr


def test_rloo_trains_with_the_toy_judge(embedded_root, tmp_path):
    out = tmp_path / "rloo"
    result = run_script(RLOO, "--reward_function", "toy", "--output_dir", str(out), "--max_steps", "2",
                        "--use_peft", "False", *SMALL, env=ONE_THREAD)
    assert_ok(result)
    results = read_json(out / "all_results.json")
    assert results["train_episodes"] == 16 and results["use_peft"] is False
    assert "RLOO on cpu" in result.stderr and "--learning_rate 3e-05 (the default for full fine-tuning" in result.stderr
    history = read_json(out / "trainer_state.json")["log_history"]
    assert any("rewards/toy/mean" in h and "kl" in h for h in history)  # RLOO's beta 0.05: KL to the reference
    from rlhfkit import models

    assert models.load_causal_lm(str(out)) is not None  # the full model, loadable


def test_a_reward_model_with_its_own_tokenizer_trains_stories260k(reward_model, tmp_path):
    out = tmp_path / "out"
    result = run_script(GRPO, "--model_name_or_path", str(fixture_path("models", "stories260K")), "--dataset_name",
                        str(_stories_prompts(tmp_path)), "--prompt_format", "raw", "--output_dir", str(out),
                        "--reward_model_name", reward_model, "--max_steps", "2", "--beta", "0.04", *SMALL,
                        env=ONE_THREAD)
    assert_ok(result)
    assert "the reward model has its own tokenizer" in result.stderr
    history = read_json(out / "trainer_state.json")["log_history"]
    assert any("rewards/reward_model/mean" in h and "kl" in h for h in history)


# ------------------------------------------------------------------------------------------- refused input
@pytest.mark.parametrize("case", ["no_reward", "groups", "causal_lm", "no_import", "wrong_type", "wrong_weights",
                                  "learning_rate_unset_by_config"])
def test_refused_input_is_one_line_and_writes_nothing(case, rules, embedded_root, tmp_path):
    flags, fragments = ["--reward_function", "toy"], ()
    if case == "no_reward":
        flags, fragments = [], ("--reward_model_name", "--reward_function")
    elif case == "groups":
        flags, fragments = ["--reward_function", "toy", "--num_generations", "3"], (
            "--num_generations 3 does not divide the generation batch of 8",)
    elif case == "causal_lm":
        flags, fragments = ["--reward_model_name", str(embedded_root / "model")], ("not a reward model",)
    elif case == "no_import":
        flags, fragments = ["--reward_function", "no_such_module_xyz:score"], ("cannot import no_such_module_xyz",)
    elif case == "wrong_type":
        flags, fragments = ["--reward_function", f"{rules}:words"], (f"{rules}:words returned str",)
    elif case == "wrong_weights":
        flags, fragments = ["--reward_function", "toy", "--reward_weights", "1", "2"], (
            "--reward_weights has 2 values for 1 rewards",)
    else:  # a YAML config with a bad value is refused like the command line
        config = tmp_path / "c.yaml"
        config.write_text("num_generations: 1\nreward_function: [toy]\n", encoding="utf-8")
        flags, fragments = ["--config", str(config)], ("--num_generations 1", "at least 2")
    out = tmp_path / "out"
    result = run_script(GRPO, "--output_dir", str(out), "--max_steps", "1", *flags, *QUIET, env=ONE_THREAD)
    assert_user_error(result, *fragments)
    assert not out.exists()


# ------------------------------------------------------------------------------------------- 2 processes
@pytest.mark.multiprocess
@pytest.mark.parametrize(("layout", "launch", "label"), [
    ("ddp", ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
             "--dynamo_backend", "no", "--main_process_port", "0"], "ddp"),
    ("zero3", ["--config_file", str(REPO / "configs" / "accelerate" / "cpu_zero3.yaml")], "deepspeed-zero3"),
    ("fsdp2", ["--config_file", str(REPO / "configs" / "accelerate" / "cpu_fsdp2.yaml")], "fsdp2"),
])
def test_two_processes_train_and_save_the_adapter(layout, launch, label, embedded_root, tmp_path):
    """grpo.py under `accelerate launch` with 2 CPU processes (DDP, DeepSpeed ZeRO-3, FSDP2): every group of
    completions within one process's batch, both processes' episodes counted, one adapter saved, which loads."""
    import subprocess
    import sys

    out = tmp_path / layout
    result = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", *launch, GRPO, "--reward_function",
                             "toy", "--output_dir", str(out), "--max_steps", "4", "--per_device_train_batch_size",
                             "4", "--num_generations", "4", "--max_completion_length", "16", "--device", "cpu",
                             *QUIET], cwd=REPO, env={**__import__("os").environ, **ONE_THREAD}, capture_output=True,
                            text=True, timeout=900)
    assert_ok(result)
    results = read_json(out / "all_results.json")
    assert results["distributed"] == label and len(results["peak_rss_mib_per_process"]) == 2
    assert results["train_episodes"] == 4 * 4 * 2
    from rlhfkit import models

    assert models.load_causal_lm(str(out), merge_adapter=True) is not None
