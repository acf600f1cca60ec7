"""Scores for finished episodes: a reward model (with its own tokenizer if it has one) or a rule.

The reward model reads prompt + *truncated* response and its score is taken at the last real token
(:func:`rlhfkit.ppo.core.last_token_index` on the attention mask), never at the token after EOS. When the
reward model's tokenizer is the policy's (same vocabulary), token ids are reused; otherwise the episode is
decoded and re-tokenised with the reward model's tokenizer (a top user request upstream), and its EOS is
appended when the policy stopped, as the reward model saw EOS after answers in training.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os

import torch

from rlhfkit.errors import UserError
from rlhfkit.ppo import core
from rlhfkit.ppo.policy import backbone, score_head, unwrap_peft

logger = logging.getLogger(__name__)


def same_vocabulary(reward_tokenizer, policy_tokenizer) -> bool:
    """Whether the policy's token ids mean the same to the reward model: every reward-model token has the
    same id in the policy's vocabulary (the policy may have gained tokens, such as a new pad) and EOS agrees."""
    if reward_tokenizer is policy_tokenizer:
        return True
    policy_vocab = policy_tokenizer.get_vocab()
    return (reward_tokenizer.eos_token_id == policy_tokenizer.eos_token_id
            and all(policy_vocab.get(token) == index for token, index in reward_tokenizer.get_vocab().items()))


class RewardModelScorer:
    """Scalar scores from a sequence-classification reward model, in batches, without gradients."""

    def __init__(self, model, tokenizer, policy_tokenizer, batch_size: int = 16, max_length: int | None = None,
                 pad_multiple: int | None = None):
        self.model, self.tokenizer, self.policy_tokenizer = model, tokenizer, policy_tokenizer
        self.batch_size, self.max_length = batch_size, max_length
        self.pad_multiple = pad_multiple  # static shapes: rows padded to a multiple of this
        self.reuse_ids = same_vocabulary(tokenizer, policy_tokenizer)
        self.trunk, self.head = backbone(unwrap_peft(model)), score_head(unwrap_peft(model))
        if not self.reuse_ids:
            logger.info("the reward model has its own tokenizer: episodes are decoded and re-tokenised for it")

    def _inputs(self, queries, query_mask, responses, response_mask, stopped):
        rows = [torch.cat([q[m.bool()], r[rm.bool()]]) for q, m, r, rm in
                zip(queries, query_mask, responses, response_mask, strict=True)]
        if not self.reuse_ids:
            texts = self.policy_tokenizer.batch_decode(rows, skip_special_tokens=True)
            eos = self.tokenizer.eos_token or ""
            texts = [t + eos if stop else t for t, stop in zip(texts, stopped.tolist(), strict=True)]
            enc = self.tokenizer(texts, add_special_tokens=True, truncation=self.max_length is not None,
                                 max_length=self.max_length)
            rows = [torch.tensor(ids) for ids in enc["input_ids"]]
        width = max(len(r) for r in rows)
        if self.pad_multiple:
            width = -(-width // self.pad_multiple) * self.pad_multiple
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):  # right padding; the mask, not a pad id, marks the real tokens
            ids[i, : len(row)], mask[i, : len(row)] = row, 1
        return ids, mask

    @torch.no_grad()
    def __call__(self, prompts, queries, query_mask, responses, response_mask, stopped, response_texts):
        device = next(self.model.parameters()).device
        ids, mask = self._inputs(queries.cpu(), query_mask.cpu(), responses.cpu(), response_mask.cpu(), stopped.cpu())
        scores = []
        for first in range(0, len(ids), self.batch_size):
            batch_ids, batch_mask = ids[first : first + self.batch_size].to(device), mask[first : first + self.batch_size].to(device)
            hidden = self.trunk(input_ids=batch_ids, attention_mask=batch_mask, use_cache=False).last_hidden_state
            last = core.last_token_index(batch_mask)
            picked = hidden[torch.arange(len(batch_ids), device=device), last]
            scores.append(self.head(picked).float().squeeze(-1))
        return torch.cat(scores)


def wrap_in_hpu_graph(reward_model, info, enabled: bool) -> None:
    """Score through an HPU graph of the reward model's trunk on Gaudi (frozen weights: safe to capture), in place:
    every :class:`RewardModelScorer` on this model then uses it. Nothing changes off Gaudi or when not enabled."""
    from rlhfkit import hpu

    hpu.wrap_for_inference(backbone(unwrap_peft(reward_model)), info, enabled, "reward scoring")


class RuleScorer:
    """Scores from a Python function ``f(prompt, response) -> float`` on the raw prompt and decoded response."""

    def __init__(self, function, name: str):
        self.function, self.name = function, name

    def __call__(self, prompts, queries, query_mask, responses, response_mask, stopped, response_texts):
        values = []
        for prompt, text in zip(prompts, response_texts, strict=True):
            value = self.function(prompt, text)
            if not isinstance(value, int | float):
                raise UserError(f"--reward_function {self.name} returned {type(value).__name__}, not a number")
            values.append(float(value))
        return torch.tensor(values, dtype=torch.float32)


def load_rule(spec: str) -> RuleScorer:
    """``toy`` (the toy task's gold judge), ``MODULE:FUNCTION`` or ``FILE.py:FUNCTION``."""
    if spec == "toy":
        from rlhfkit import toy

        return RuleScorer(toy.gold_score, "toy")
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise UserError(f"--reward_function {spec}: use MODULE:FUNCTION, FILE.py:FUNCTION or toy")
    try:
        if target.endswith(".py"):
            if not os.path.isfile(target):
                raise UserError(f"--reward_function {spec}: {target} does not exist")
            module_spec = importlib.util.spec_from_file_location("rlhfkit_user_reward", target)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except ImportError as err:
        raise UserError(f"--reward_function {spec}: cannot import {target} ({err})") from None
    function = getattr(module, attr, None)
    if not callable(function):
        raise UserError(f"--reward_function {spec}: {target} has no function {attr}")
    return RuleScorer(function, spec)
