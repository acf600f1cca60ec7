"""The PPO critic arrangements and the learning-rate guard, as a user runs ppo.py (subprocesses, tiny runs).

* ``--value_model auto`` (the default): with a reward model that reads the policy's token ids, the critic starts
  from the reward model; with LoRA it is the reward model plus an adapter, and the same model with its adapter
  disabled scores (one copy of the reward model's weights). With a rule it is a value head.
* every arrangement trains, checkpoints and resumes to the planned end;
* a run whose policy cannot move (learning rate 1e-9) is told so in one warning; a run that moves is not.
"""

from __future__ import annotations

import contextlib
import json

import pytest
import torch
from conftest import REPO, run_script

PPO = str(REPO / "ppo.py")
SMALL = ["--batch_size", "4", "--mini_batch_size", "2", "--ppo_epochs", "1", "--output_max_length", "12",
         "--report_to", "none", "--sample_every", "0", "--learning_rate", "1e-3"]
STILL = "the policy has not moved in 5 steps"


def _results(out) -> dict:
    return json.loads((out / "all_results.json").read_text())


def test_lora_critic_scores_with_its_adapter_disabled(reward_model, embedded_root):
    """The shared critic's adapter-disabled scores are the reward model's, however far its adapter and head moved."""
    from peft import LoraConfig, get_peft_model

    from rlhfkit import models, sampling, scoring

    tokenizer = models.load_tokenizer(reward_model)
    plain = models.load_sequence_classifier(reward_model).eval()
    critic = get_peft_model(models.load_sequence_classifier(reward_model),
                            LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules="all-linear")).eval()
    with torch.no_grad():
        for p in critic.parameters():
            if p.requires_grad:
                p.normal_(0, 0.5)  # LoRA B starts at zero and the head copy equals the original: make both matter
    _, ids = sampling.encode_prompts(tokenizer, ["How was the pizza?", "Describe the lamp."])
    queries, query_mask = sampling.left_pad(ids, tokenizer.pad_token_id)
    answer = tokenizer(" It is great.", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    responses = torch.tensor([answer, answer])
    args = (["p", "q"], queries, query_mask, responses, torch.ones_like(responses), torch.tensor([True, True]), [])
    expected = scoring.RewardModelScorer(plain, tokenizer, tokenizer)(*args)
    shared = scoring.RewardModelScorer(critic, tokenizer, tokenizer, adapter_disabled=True)(*args)
    adapted = scoring.RewardModelScorer(critic, tokenizer, tokenizer)(*args)
    torch.testing.assert_close(shared, expected, atol=1e-5, rtol=0)
    assert (adapted - expected).abs().max() > 1e-2  # the adapter is really there when enabled


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["lora-reward", "full-reward", "lora-head"])
def test_critic_variants_train_and_resume(variant, reward_model, tmp_path):
    flags = {"lora-reward": [], "full-reward": ["--use_peft", "False"], "lora-head": ["--value_model", "head"]}[variant]
    out = tmp_path / "out"
    common = ["--reward_model_name", reward_model, "--output_dir", str(out), "--steps", "4", *SMALL, *flags]
    first = run_script(PPO, *common, "--save_steps", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    results = _results(out)
    expected = {"lora-reward": ("reward", "the reward model + LoRA, its adapter-disabled self scoring"),
                "full-reward": ("reward", "a trained copy of the reward model"),
                "lora-head": ("head", "a value head on the policy trunk")}[variant]
    assert (results["value_model"], results["critic"]) == expected
    assert f"critic: {expected[1]}" in first.stderr
    from safetensors.torch import load_file

    names = list(load_file(str(out / "checkpoint-2" / "trainable.safetensors")))
    assert any(n.startswith("critic.") for n in names) == (expected[0] == "reward"), names[:5]
    resumed = run_script(PPO, *common, "--resume_from_checkpoint", str(out / "checkpoint-2"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {out / 'checkpoint-2'} at step 2" in resumed.stderr
    assert _results(out)["train_steps"] == 4


@pytest.mark.slow
def test_a_policy_that_cannot_move_is_told_so_once(tmp_path):
    runs = {}
    for name, rate in (("still", "1e-9"), ("moving", "1e-3")):
        out = tmp_path / name
        runs[name] = run_script(PPO, "--reward_function", "toy", "--output_dir", str(out), "--steps", "7",
                                *SMALL[:-2], "--learning_rate", rate)
        assert runs[name].returncode == 0, runs[name].stderr[-3000:]
    warnings = [line for line in runs["still"].stderr.splitlines() if STILL in line]
    assert len(warnings) == 1 and "--learning_rate 1e-09 is likely too small for a LoRA adapter" in warnings[0]
    assert STILL not in runs["moving"].stderr


def test_default_learning_rate_depends_on_lora(tmp_path):
    from rlhfkit.ppo.config import FULL_LEARNING_RATE, LORA_LEARNING_RATE, PPOArguments

    for use_peft, expected in ((True, LORA_LEARNING_RATE), (False, FULL_LEARNING_RATE)):
        args = PPOArguments(reward_function="toy")
        assert args.resolve_learning_rate(use_peft) is None and args.learning_rate == expected
    assert LORA_LEARNING_RATE > FULL_LEARNING_RATE
    # a given rate is kept; a full fine-tuning rate on LoRA is kept too, with a warning naming the default
    slow = PPOArguments(reward_function="toy", learning_rate=3e-5)
    warning = slow.resolve_learning_rate(True)
    assert slow.learning_rate == 3e-5 and "--learning_rate 3e-05 on LoRA" in warning and f"{LORA_LEARNING_RATE:g}" in warning
    assert PPOArguments(reward_function="toy", learning_rate=3e-5).resolve_learning_rate(False) is None
    assert PPOArguments(reward_function="toy", learning_rate=2e-4).resolve_learning_rate(True) is None


def test_split_backward_gives_the_summed_loss_gradients(reward_model):
    """One process with a separate critic: the critic's forward/backward, then the policy's (peak memory: the
    larger of the two models' activations, not their sum) give the gradients of the one summed loss."""
    from types import SimpleNamespace

    from accelerate import Accelerator
    from peft import LoraConfig, get_peft_model

    from rlhfkit import models, sampling
    from rlhfkit.ppo.policy import PolicyAndValue
    from rlhfkit.ppo.trainer import PPOTrainer

    torch.manual_seed(0)
    tokenizer = models.load_tokenizer(reward_model)
    lora = {"r": 4, "lora_alpha": 8, "target_modules": "all-linear"}
    policy = get_peft_model(models.load_causal_lm(reward_model), LoraConfig(task_type="CAUSAL_LM", **lora))
    critic = get_peft_model(models.load_sequence_classifier(reward_model), LoraConfig(task_type="SEQ_CLS", **lora))
    module = PolicyAndValue(policy, critic)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.normal_(0, 0.1)  # LoRA B starts at zero: give every trainable weight a gradient path
    _, ids = sampling.encode_prompts(tokenizer, ["How was the pizza?", "Describe the red lamp, please."])
    queries, query_mask = sampling.left_pad(ids, tokenizer.pad_token_id)
    responses = torch.randint(5, 100, (2, 6))
    episodes = sampling.Episodes(["a", "b"], queries, query_mask, responses, torch.ones_like(responses),
                                 torch.tensor([False, False]), ["", ""])
    mask = torch.ones(2, 6)
    old = (torch.randn(2, 6) - 3, torch.randn(2, 6), torch.randn(2, 6), torch.randn(2, 6))
    args = SimpleNamespace(gradient_accumulation_steps=2, temperature=0.7, cliprange=0.2, cliprange_value=0.2,
                           vf_coef=0.1)
    grads, losses = {}, {}
    for split in (False, True):
        module.zero_grad(set_to_none=True)
        fake = SimpleNamespace(args=args, accelerator=Accelerator(cpu=True), split_backward=split, model=module,
                               zero=None, _autocast=contextlib.nullcontext)
        pg_loss, _, vf_loss, _, logits = PPOTrainer._backward(fake, episodes, *old, mask)
        assert logits.shape[:2] == (2, 6)
        losses[split] = (pg_loss.item(), vf_loss.item())
        grads[split] = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    assert losses[True] == pytest.approx(losses[False], rel=1e-6)
    assert set(grads[True]) == set(grads[False]) and any("critic" in n for n in grads[True])
    for name, grad in grads[False].items():
        torch.testing.assert_close(grads[True][name], grad, atol=1e-6, rtol=1e-5)
