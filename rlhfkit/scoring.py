"""Scoring, one implementation for every script: reward-model scores read as reward_modeling.py trained them, and
rule rewards.

TRL's ``RewardTrainer`` trains on ``prompt + answer`` with the tokenizer's EOS appended (plain text; a chat
template writes its own end of turn), and ``AutoModelForSequenceClassification`` reads the score at the
**rightmost token that is not the pad id** of the model's config. With a tokenizer whose pad is its EOS
(GPT-2 style) that is the token *before* the appended EOS; otherwise the EOS itself. Everything here reads
the score by that rule, on the same text, so a score means the same in training, in held-out evaluation
(reward_modeling.py), in PPO and in compare_base_vs_ppo.py:

* :func:`score_texts` scores whole texts (evaluation, the pair texts of :func:`pair_texts`);
* :class:`RewardModelScorer` scores episodes (prompt + truncated response). When the reward model's tokenizer
  is the policy's (same vocabulary) token ids are reused: a response that stopped ends in EOS as in training.
  Otherwise the episode is decoded and re-tokenised with the reward model's tokenizer, and its EOS appended
  when the policy stopped.

Both go through :func:`score_rows`. The pad id of the rule is the one the reward model was trained with (its
saved config), never a pad token a later script added to its own tokenizer.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os

import torch

from rlhfkit import schemas
from rlhfkit.errors import UserError
from rlhfkit.models import backbone, disable_dropout, score_head, unwrap_peft

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------- the score rule
def trained_pad_id(model) -> int | None:
    """The pad id the reward model's score rule skips: its config's, as saved by reward_modeling.py."""
    config = unwrap_peft(model).config
    return config.get_text_config().pad_token_id if hasattr(config, "get_text_config") else config.pad_token_id


def score_index(ids: torch.Tensor, mask: torch.Tensor, pad_id: int | None) -> torch.Tensor:
    """(B,) where the score is read: the rightmost real token whose id is not ``pad_id`` (transformers'
    sequence-classification rule, restricted to the attention mask). A row of only pads gives 0."""
    real = mask.bool() if pad_id is None else mask.bool() & (ids != pad_id)
    positions = torch.arange(ids.shape[1], device=ids.device)
    return (real.long() * positions).argmax(-1)


@torch.no_grad()
def score_rows(model, rows: list[torch.Tensor], pad_id: int | None, batch_size: int = 16,
               pad_multiple: int | None = None) -> torch.Tensor:
    """(N,) float32 scores of token-id rows, in batches of right-padded rows; the mask, not a pad id, marks the
    real tokens (filler id 0, never attended to). ``pad_multiple`` (static shapes): widths rounded up to it."""
    inner = unwrap_peft(model)
    trunk, head = backbone(inner), score_head(inner)
    device = next(model.parameters()).device
    scores = []
    with root_unsharded(model):
        for first in range(0, len(rows), batch_size):
            scores.append(_score_batch(trunk, head, rows[first: first + batch_size], pad_id, pad_multiple, device))
    return torch.cat(scores) if scores else torch.zeros(0)


@contextlib.contextmanager
def root_unsharded(model):
    """FSDP2 (``fully_shard``): the root module's own parameters (embeddings, final norm, score head) gathered
    while the trunk and head are called directly, which skips the root's forward hooks that would gather them;
    the layers gather their own. Every process must take part (a collective). Elsewhere, nothing."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule):
        yield
        return
    model.unshard()
    try:
        yield
    finally:
        model.reshard()


def _score_batch(trunk, head, batch, pad_id, pad_multiple, device) -> torch.Tensor:
    """One batch of :func:`score_rows`: right-padded, scored at :func:`score_index`."""
    width = max(len(r) for r in batch)
    if pad_multiple:
        width = -(-width // pad_multiple) * pad_multiple
    ids = torch.zeros((len(batch), width), dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, row in enumerate(batch):
        ids[i, : len(row)], mask[i, : len(row)] = row, 1
    ids, mask = ids.to(device), mask.to(device)
    hidden = trunk(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    picked = hidden[torch.arange(len(batch), device=device), score_index(ids, mask, pad_id)]
    return head(picked).float().squeeze(-1)


# ------------------------------------------------------------------------------------------ texts
def pair_texts(rendered, tokenizer) -> tuple[list[str], list[str]]:
    """(chosen texts, rejected texts) for rendered preference rows, formatted as ``RewardTrainer`` trains:
    prompt + answer + EOS, or the chat template over the messages."""
    chosen, rejected = [], []
    conversational = schemas.has_chat_template(tokenizer)
    for row in rendered:
        for key, out in (("chosen", chosen), ("rejected", rejected)):
            if conversational:
                out.append(tokenizer.apply_chat_template(row["prompt"] + row[key], tokenize=False))
            else:
                text = row["prompt"] + row[key]
                out.append(text if text.endswith(tokenizer.eos_token) else text + tokenizer.eos_token)
    return chosen, rejected


def score_texts(model, tokenizer, texts: list[str], batch_size: int = 16, max_length: int | None = None) -> list[float]:
    """The reward model's score of each whole text (no gradients), in order; special tokens (BOS) added as
    ``RewardTrainer`` adds them unless a chat template wrote them."""
    model.eval()
    encoded = tokenizer(list(texts), add_special_tokens=not schemas.has_chat_template(tokenizer),
                        truncation=max_length is not None, max_length=max_length)["input_ids"]
    rows = [torch.tensor(ids, dtype=torch.long) for ids in encoded]
    return score_rows(model, rows, trained_pad_id(model), batch_size).tolist()


# --------------------------------------------------------------------------------------- episodes
def same_vocabulary(reward_tokenizer, policy_tokenizer) -> bool:
    """Whether the policy's token ids mean the same to the reward model: every reward-model token has the
    same id in the policy's vocabulary (the policy may have gained tokens, such as a new pad) and EOS agrees."""
    if reward_tokenizer is policy_tokenizer:
        return True
    policy_vocab = policy_tokenizer.get_vocab()
    return (reward_tokenizer.eos_token_id == policy_tokenizer.eos_token_id
            and all(policy_vocab.get(token) == index for token, index in reward_tokenizer.get_vocab().items()))


class RewardModelScorer:
    """Scalar scores of episodes from a sequence-classification reward model, in batches, without gradients."""

    def __init__(self, model, tokenizer, policy_tokenizer, batch_size: int = 16, max_length: int | None = None,
                 pad_multiple: int | None = None, adapter_disabled: bool = False):
        """``adapter_disabled``: ``model`` is a PEFT model (PPO's LoRA critic on the reward model) that scores
        with its adapter switched off, i.e. as the reward model it was loaded from."""
        self.model, self.tokenizer, self.policy_tokenizer = model, tokenizer, policy_tokenizer
        self.adapter_disabled = adapter_disabled
        self.batch_size, self.max_length = batch_size, max_length
        self.pad_multiple = pad_multiple  # static shapes: rows padded to a multiple of this
        self.reuse_ids = same_vocabulary(tokenizer, policy_tokenizer)
        self.pad_id = trained_pad_id(model)
        if not self.reuse_ids:
            logger.info("the reward model has its own tokenizer: episodes are decoded and re-tokenised for it")

    def rows(self, queries, query_mask, responses, response_mask, stopped) -> list[torch.Tensor]:
        """The token ids the reward model reads for each episode of padded tensors: prompt + truncated response
        (+ EOS if it stopped), in the reward model's vocabulary."""
        prompts = [q[m.bool()] for q, m in zip(queries, query_mask, strict=True)]
        answers = [r[m.bool()] for r, m in zip(responses, response_mask, strict=True)]
        return self.episode_rows(prompts, answers, stopped.tolist())

    def episode_rows(self, prompts, responses, stopped) -> list[torch.Tensor]:
        """:meth:`rows` for unpadded token-id rows (tensors or lists): the policy's ids reused when the vocabulary
        is shared (a response that stopped ends in its EOS already), else decoded and re-tokenised with the reward
        model's tokenizer, its EOS appended when the policy stopped."""
        rows = [torch.cat([torch.as_tensor(p, dtype=torch.long), torch.as_tensor(r, dtype=torch.long)])
                for p, r in zip(prompts, responses, strict=True)]
        if self.reuse_ids:
            return rows
        texts = self.policy_tokenizer.batch_decode(rows, skip_special_tokens=True)
        eos = self.tokenizer.eos_token or ""
        texts = [t + eos if stop else t for t, stop in zip(texts, stopped, strict=True)]
        encoded = self.tokenizer(texts, add_special_tokens=True, truncation=self.max_length is not None,
                                 max_length=self.max_length)["input_ids"]
        return [torch.tensor(ids, dtype=torch.long) for ids in encoded]

    def score(self, rows: list[torch.Tensor]) -> torch.Tensor:
        """(N,) scores of the rows :meth:`rows` / :meth:`episode_rows` give."""
        with self.model.disable_adapter() if self.adapter_disabled else contextlib.nullcontext():
            return score_rows(self.model, rows, self.pad_id, self.batch_size, self.pad_multiple)

    def __call__(self, prompts, queries, query_mask, responses, response_mask, stopped, response_texts):
        return self.score(self.rows(queries.cpu(), query_mask.cpu(), responses.cpu(), response_mask.cpu(),
                                    stopped.cpu()))


def load_reward_model(name: str, tokenizer_name: str | None, fallback_tokenizer, dtype, device,
                      trust_remote_code: bool = False, allow_pickle: bool = False):
    """(reward model, its tokenizer), frozen, in eval mode, dropout off, on ``device``. The tokenizer is
    ``tokenizer_name``, else the one saved with the reward model, else ``fallback_tokenizer``; the model keeps
    the pad id it was trained with (a model saved without one gets its tokenizer's)."""
    from rlhfkit import models

    reward_tokenizer = models.load_reward_tokenizer(name, tokenizer_name, fallback_tokenizer, trust_remote_code)
    model = models.load_sequence_classifier(name, dtype=dtype, trained_head=True, trust_remote_code=trust_remote_code,
                                            allow_pickle=allow_pickle)
    if trained_pad_id(model) is None:
        model.config.pad_token_id = reward_tokenizer.pad_token_id
    disable_dropout(model)
    model.requires_grad_(False).eval().to(device)
    return model, reward_tokenizer


def wrap_in_hpu_graph(reward_model, info, enabled: bool) -> None:
    """Score through an HPU graph of the reward model's trunk on Gaudi (frozen weights: safe to capture), in place:
    every :class:`RewardModelScorer` on this model then uses it. Nothing changes off Gaudi or when not enabled."""
    from rlhfkit import hpu

    hpu.wrap_for_inference(backbone(unwrap_peft(reward_model)), info, enabled, "reward scoring")


# ------------------------------------------------------------------------------------------ rules
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


def import_function(spec: str, flag: str = "--reward_function"):
    """The function ``MODULE:FUNCTION`` or ``FILE.py:FUNCTION`` names (``flag``: the option it came from, for
    the error)."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise UserError(f"{flag} {spec}: use MODULE:FUNCTION, FILE.py:FUNCTION or toy")
    try:
        if target.endswith(".py"):
            if not os.path.isfile(target):
                raise UserError(f"{flag} {spec}: {target} does not exist")
            module_spec = importlib.util.spec_from_file_location("rlhfkit_user_reward", target)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except ImportError as err:
        raise UserError(f"{flag} {spec}: cannot import {target} ({err})") from None
    except Exception as err:  # noqa: BLE001 - the user's module failed while loading: say where, in one line
        raise UserError(f"{flag} {spec}: importing {target} failed: {type(err).__name__}: {err}") from None
    function = getattr(module, attr, None)
    if not callable(function):
        raise UserError(f"{flag} {spec}: {target} has no function {attr}")
    return function


def load_rule(spec: str) -> RuleScorer:
    """``toy`` (the toy task's gold judge), ``MODULE:FUNCTION`` or ``FILE.py:FUNCTION``."""
    if spec == "toy":
        from rlhfkit import toy

        return RuleScorer(toy.gold_score, "toy")
    return RuleScorer(import_function(spec), spec)
