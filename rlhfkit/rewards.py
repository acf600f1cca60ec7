"""Rewards for the critic-free trainers (grpo.py, rloo.py), as TRL reward functions.

TRL's ``GRPOTrainer`` / ``RLOOTrainer`` call each reward function as ``f(prompts=..., completions=...,
completion_ids=..., **dataset_columns)`` and want one float (or None: "does not apply") per completion. This module
turns the toolkit's two reward sources into such functions, so that a score means what it means in ppo.py and
compare_base_vs_ppo.py:

* **a reward model** (:class:`ModelReward`): scored through :class:`rlhfkit.scoring.RewardModelScorer`, the
  scorer ppo.py uses: prompt ids + completion ids (the EOS the policy generated included), or, with a reward model
  of another vocabulary, the decoded text re-tokenised with its own tokenizer and its EOS appended when the policy
  stopped. TRL's own reward-model path would score ``prompt + completion`` text without the EOS or the BOS that
  ``RewardTrainer`` trained with.
* **rules** (:class:`RuleReward`), named as ppo.py names them (``MODULE:FUNCTION``, ``FILE.py:FUNCTION``, ``toy``).
  A function called ``f(prompt, response) -> float`` (ppo.py's convention) gets the dataset's prompt as text and
  the decoded completion; a function whose parameters are named ``prompts`` and ``completions`` (TRL's convention)
  gets the whole batch, TRL's keyword arguments included, and returns a list.

Several rewards add up with TRL's ``--reward_weights`` (in order: the reward model first, then each
``--reward_function`` as given). A reward that returns the wrong type or count is a one-line error naming it;
:func:`probe` calls every rule once before training, so a bad one fails before anything is written.
"""

from __future__ import annotations

import inspect
import logging
import math
from dataclasses import dataclass, field

from rlhfkit.errors import UserError

logger = logging.getLogger(__name__)

PROMPT_TEXT_COLUMN = "prompt_text"  # the dataset column with each prompt as plain text, for f(prompt, response)


@dataclass
class RewardArguments:
    """Where the critic-free trainers' rewards come from: a reward model, rules, or both."""

    reward_model_name: str | None = field(
        default=None,
        metadata={"help": "Reward model (a sequence classifier with a scalar score head, e.g. from "
                  "reward_modeling.py, merged), scored as ppo.py scores it."},
    )
    reward_tokenizer_name: str | None = field(
        default=None,
        metadata={"help": "The reward model's tokenizer; default: the one saved with it, else the policy's. A "
                  "different vocabulary is handled by decoding and re-tokenising."},
    )
    reward_function: list[str] | None = field(
        default=None,
        metadata={"help": "Rule rewards, one or more: MODULE:FUNCTION or FILE.py:FUNCTION ('toy': the embedded toy "
                  "task's gold judge). f(prompt, response) -> float as in ppo.py, or TRL's f(prompts, completions, "
                  "**kwargs) -> list[float]. Weighted with --reward_weights (the reward model first)."},
    )

    def check(self) -> None:
        if not self.reward_model_name and not self.reward_function:
            raise UserError("no reward: pass --reward_model_name (a reward model), --reward_function (a rule), or "
                            "both")


def batch_convention(function) -> bool:
    """Whether ``function`` takes TRL's batch call (parameters named ``prompts`` and ``completions``)."""
    try:
        names = set(inspect.signature(function).parameters)
    except (TypeError, ValueError):  # a builtin without a signature: the per-example call
        return False
    return {"prompts", "completions"} <= names


def _number(value) -> bool:
    """A reward TRL takes: a number, or None (NaN too: TRL's own marker for "does not apply")."""
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def _accepted(function, kwargs: dict) -> dict:
    """The keyword arguments ``function`` takes (all of them when it has ``**kwargs``)."""
    parameters = inspect.signature(function).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return kwargs
    names = {p.name for p in parameters}
    return {k: v for k, v in kwargs.items() if k in names}


class RuleReward:
    """A rule as a TRL reward function (see the module docstring for its two conventions)."""

    def __init__(self, function, spec: str):
        self.function, self.spec = function, spec
        self.batch = batch_convention(function)
        self.__name__ = "toy" if spec == "toy" else getattr(function, "__name__", spec)

    def __call__(self, prompts, completions, completion_ids=None, **kwargs) -> list[float | None]:
        if self.batch:
            call = {"prompts": prompts, "completions": completions, "completion_ids": completion_ids, **kwargs}
            values = self.function(**_accepted(self.function, call))
            if hasattr(values, "tolist"):  # a tensor or an array
                values = values.tolist()
            if not isinstance(values, list | tuple):
                raise UserError(f"--reward_function {self.spec} returned {type(values).__name__}, not a list of "
                                f"numbers (TRL's convention: one float per completion)")
            if len(values) != len(completions):
                raise UserError(f"--reward_function {self.spec} returned {len(values)} rewards for "
                                f"{len(completions)} completions: return one per completion")
        else:
            texts = kwargs.get(PROMPT_TEXT_COLUMN) or prompts
            values = [self.function(p, c) for p, c in zip(texts, completions, strict=True)]
        for value in values:
            if not _number(value):
                raise UserError(f"--reward_function {self.spec} returned {type(value).__name__} "
                                f"{str(value)[:40]!r}, not a number: return a float (or None: does not apply)")
        return [None if v is None or math.isnan(v) else float(v) for v in values]


class ModelReward:
    """A reward model as a TRL reward function, through ppo.py's :class:`rlhfkit.scoring.RewardModelScorer`."""

    __name__ = "reward_model"

    def __init__(self, scorer, policy_tokenizer, stop_ids: list[int]):
        self.scorer, self.policy_tokenizer, self.stop_ids = scorer, policy_tokenizer, set(stop_ids)

    def __call__(self, prompts, completions, completion_ids, **kwargs) -> list[float]:
        # the prompt ids as TRL encoded the text prompts for generation (its processing class, special tokens on)
        prompt_ids = self.policy_tokenizer(list(prompts))["input_ids"]
        stopped = [bool(ids) and ids[-1] in self.stop_ids for ids in completion_ids]
        rows = self.scorer.episode_rows(prompt_ids, completion_ids, stopped)
        return self.scorer.score(rows).tolist()


def load_rule(spec: str) -> RuleReward:
    from rlhfkit import scoring

    if spec == "toy":
        from rlhfkit import toy

        return RuleReward(toy.gold_score, "toy")
    return RuleReward(scoring.import_function(spec), spec)


def build(args: RewardArguments, rules: list[RuleReward], policy_tokenizer, stop_ids: list[int], dtype, device,
          trust_remote_code: bool, allow_pickle: bool, batch_size: int) -> list:
    """The reward functions, in ``--reward_weights`` order: the reward model (frozen, on ``device``), then the
    ``rules`` (:func:`load_rule` of each ``--reward_function``, loaded first so a bad one fails early)."""
    from rlhfkit import scoring

    functions = []
    if args.reward_model_name:
        model, tokenizer = scoring.load_reward_model(args.reward_model_name, args.reward_tokenizer_name,
                                                     policy_tokenizer, dtype, device, trust_remote_code, allow_pickle)
        scorer = scoring.RewardModelScorer(model, tokenizer, policy_tokenizer, batch_size=batch_size)
        functions.append(ModelReward(scorer, policy_tokenizer, stop_ids))
    return functions + list(rules)


def probe(functions: list, prompt: str, prompt_text: str) -> None:
    """Call every rule once on ``prompt`` with an empty completion (one a policy may well produce), so that a rule
    that fails or returns the wrong type is refused before training starts."""
    for function in functions:
        if not isinstance(function, RuleReward):
            continue
        try:
            function([prompt], [""], completion_ids=[[]], **{PROMPT_TEXT_COLUMN: [prompt_text]})
        except UserError:
            raise
        except Exception as err:  # noqa: BLE001 - the user's rule failed: one line naming it
            raise UserError(f"--reward_function {function.spec} failed on an empty completion of the first prompt: "
                            f"{type(err).__name__}: {err}") from None


def describe(functions: list, weights: list[float] | None) -> str:
    weights = weights or [1.0] * len(functions)
    return ", ".join(f"{w:g} x {getattr(f, 'spec', f.__name__)}" for f, w in zip(functions, weights, strict=True))
