"""Answers from several models to the same held-out prompts, scored (the engine of compare_base_vs_ppo.py).

Each model samples through :mod:`rlhfkit.sampling` with the same settings and nothing inherited from its
checkpoint (as in PPO, so a checkpoint's own generation settings cannot make one model look better), starting
from the same seed. Every answer is truncated after its first stop token and scored by the reward model as it
was trained (:class:`rlhfkit.scoring.RewardModelScorer`, which also handles a reward model with its own
tokenizer), and by a gold judge when there is one (the toy task's :func:`rlhfkit.toy.gold_score`, or a rule).

KL from the base is measured on each model's *own* samples: the sum over response tokens of
``log p_model - log p_base`` at the sampling temperature (the k1 estimator, unbiased for
KL(model || base) of the temperature-scaled distributions, as TRL's ``objective/kl``). It needs the base to
read the model's token ids (same vocabulary) and answers sampled from the full distribution (no top-k/top-p
truncation, which the log-probs would not account for); otherwise it is reported as missing with the reason.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from rlhfkit import schemas
from rlhfkit.errors import UserError
from rlhfkit.sampling_args import SamplingSettings

logger = logging.getLogger(__name__)


@dataclass
class ModelSamples:
    """One model's answers and scores; arrays have shape (prompts, generations per prompt)."""

    name: str
    path: str
    responses: list[list[str]]
    rewards: np.ndarray
    gold: np.ndarray | None
    tokens: np.ndarray
    stopped: np.ndarray
    kl: np.ndarray | None = None
    kl_note: str | None = None
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def tokens_per_second(self) -> float:
        return float(self.tokens.sum()) / self.seconds if self.seconds > 0 else 0.0


@dataclass
class LoadedModel:
    name: str
    path: str
    model: torch.nn.Module
    tokenizer: object
    generator: torch.nn.Module | None = None  # what generates, when not ``model`` (an HPU-graph view on Gaudi)


def load_model(name: str, path: str, tokenizer_fallback: str | None, dtype, device, trust_remote_code: bool = False,
               allow_pickle: bool = False) -> LoadedModel:
    """A causal LM (full, merged, or an adapter folder merged into its base) and its tokenizer, left-padding.

    A model folder saved without tokenizer files uses ``tokenizer_fallback``."""
    from rlhfkit import models

    models.check_model_source(path, f"{name} model")
    source = path if models.has_own_tokenizer(path) or tokenizer_fallback is None else tokenizer_fallback
    tokenizer = models.load_tokenizer(source, trust_remote_code, padding_side="left")
    models.ensure_pad_token(tokenizer)
    model = models.load_causal_lm(path, dtype=dtype, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle,
                                  merge_adapter=True)
    models.check_vocabulary(model, tokenizer, f"{name} model {path}", source)
    model.to(device)
    model.eval()
    return LoadedModel(name, path, model, tokenizer)


def resolve_gold_judge(spec: str, prompts: list) -> tuple[Callable[[str, str], float] | None, str | None]:
    """(judge ``f(prompt, response) -> float``, its name): ``auto`` is the toy task's gold judge when every
    prompt is a toy question and none otherwise; ``toy``; ``none``; ``MODULE:FUNC`` or ``FILE.py:FUNC``."""
    from rlhfkit import toy

    if spec == "none":
        return None, None
    if spec == "auto":
        if all(toy.is_toy_question(schemas.prompt_text(p)) for p in prompts):
            return toy.gold_score, "toy"
        return None, None
    if spec == "toy":
        return toy.gold_score, "toy"
    from rlhfkit.scoring import load_rule

    return load_rule(spec).function, spec


def prompt_ids(loaded: list[LoadedModel], prompts: list, prompt_format: str, max_length: int) -> tuple[list, dict]:
    """(kept prompts, {model name: token ids of each kept prompt}): a prompt longer than ``max_length`` tokens
    under any model's tokenizer is dropped for every model, so the comparison stays paired."""
    from rlhfkit.sampling import encode_prompts

    encoded = {m.name: encode_prompts(m.tokenizer, prompts, prompt_format)[1] for m in loaded}
    keep = [i for i in range(len(prompts)) if all(len(ids[i]) <= max_length for ids in encoded.values())]
    if not keep:
        raise UserError(f"every prompt is longer than --input_max_length {max_length} tokens: raise it")
    if len(keep) < len(prompts):
        logger.warning("dropped %d of %d prompts longer than --input_max_length %d tokens", len(prompts) - len(keep),
                       len(prompts), max_length)
    return [prompts[i] for i in keep], {name: [ids[i] for i in keep] for name, ids in encoded.items()}


def kl_from_reference(loaded: LoadedModel, reference: LoadedModel, episodes, temperature: float) -> torch.Tensor:
    """Per-sequence KL estimate sum_t (log p_model - log p_ref) on ``episodes`` sampled from ``loaded``; NaN
    for a sequence holding a token the reference does not have (an added pad token, say)."""
    from rlhfkit.sampling import response_logprobs

    logprobs = response_logprobs(loaded.model, episodes, temperature)
    size = reference.model.get_input_embeddings().weight.shape[0]
    unknown = ((episodes.responses >= size) & episodes.response_mask.bool()).any(-1)
    unknown |= ((episodes.queries >= size) & episodes.query_mask.bool()).any(-1)
    # masked positions (pads) may hold ids the reference lacks: they are never attended to, so any id does
    safe = type(episodes)(episodes.prompts, episodes.queries.masked_fill(episodes.query_mask == 0, 0).clamp(max=size - 1),
                          episodes.query_mask,
                          episodes.responses.masked_fill(episodes.response_mask == 0, 0).clamp(max=size - 1),
                          episodes.response_mask, episodes.stopped, episodes.response_texts)
    ref_logprobs = response_logprobs(reference.model, safe, temperature)
    mask = episodes.response_mask.float()
    kl = ((logprobs - ref_logprobs) * mask).sum(-1).float()
    return kl.masked_fill(unknown, float("nan"))


def kl_unavailable(loaded: LoadedModel, reference: LoadedModel | None, settings: SamplingSettings) -> str | None:
    """Why KL from the base cannot be measured for ``loaded`` (None when it can)."""
    from rlhfkit.scoring import same_vocabulary

    if reference is None or loaded is reference:
        return "this is the base" if loaded is reference else "no base model"
    if not settings.do_sample:
        return "greedy decoding (KL needs sampled answers)"
    if settings.top_k or settings.top_p < 1:
        return "top-k/top-p sampling (KL needs answers sampled from the full distribution)"
    if not same_vocabulary(reference.tokenizer, loaded.tokenizer):
        return "the model and the base have different tokenizers"
    return None


@torch.no_grad()
def sample_model(loaded: LoadedModel, prompts: list, ids: list[list[int]], settings: SamplingSettings, scorer_for,
                 gold: Callable[[str, str], float] | None, reference: LoadedModel | None = None,
                 static_shapes: bool = False) -> ModelSamples:
    """Generate ``generations_per_prompt`` answers per prompt with ``loaded``, in batches, and score them.

    ``scorer_for(tokenizer)`` returns the reward scorer for this model's token ids. ``static_shapes`` (HPU
    graphs): prompts left-padded to the longest of the run and a static KV cache."""
    from transformers import set_seed

    from rlhfkit import models, sampling

    model, tokenizer = loaded.model, loaded.tokenizer
    device = next(model.parameters()).device
    stop_ids = models.stop_token_ids("eos", tokenizer, model.generation_config)
    config = sampling.generation_config(settings.max_new_tokens, stop_ids, tokenizer.pad_token_id,
                                        do_sample=settings.do_sample, temperature=settings.temperature,
                                        top_k=settings.top_k, top_p=settings.top_p, static_cache=static_shapes)
    width = max(len(row) for row in ids) if static_shapes else None
    lean = loaded.generator is None and sampling.lean_for(settings.lean_decode, model, config)
    scorer = scorer_for(tokenizer)
    kl_note = kl_unavailable(loaded, reference, settings)
    k = settings.generations_per_prompt
    responses, rewards, golds, tokens, stopped, kls = [], [], [], [], [], []
    set_seed(settings.seed)  # every model starts from the same random state
    started = last_log = time.perf_counter()
    per_batch = max(1, settings.batch_size // k)
    for first in range(0, len(prompts), per_batch):
        chunk = list(range(first, min(first + per_batch, len(prompts))))
        rows = [ids[i] for i in chunk for _ in range(k)]
        batch_prompts = [prompts[i] for i in chunk for _ in range(k)]
        queries, query_mask = sampling.left_pad(rows, tokenizer.pad_token_id, device, width)
        episodes = sampling.sample(loaded.generator or model, tokenizer, batch_prompts, queries, query_mask, config,
                                  stop_ids, lean=lean)
        rewards.append(scorer(episodes.prompts, queries, query_mask, episodes.responses, episodes.response_mask,
                              episodes.stopped, episodes.response_texts).float().cpu())
        if gold is not None:
            golds.append(torch.tensor([float(gold(schemas.prompt_text(p), text)) for p, text in
                                       zip(batch_prompts, episodes.response_texts, strict=True)]))
        if kl_note is None:
            kls.append(kl_from_reference(loaded, reference, episodes, settings.temperature).cpu())
        responses.extend(text.strip() for text in episodes.response_texts)
        tokens.append(episodes.response_mask.sum(-1).cpu())
        stopped.append(episodes.stopped.cpu())
        now = time.perf_counter()
        done = chunk[-1] + 1
        if now - last_log > 10 or done == len(prompts):
            last_log = now
            rate = done / (now - started)
            logger.info("%s: %d/%d prompts, %.1f prompts/s, ETA %.0fs", loaded.name, done, len(prompts), rate,
                        (len(prompts) - done) / rate if rate > 0 else 0.0)
    seconds = time.perf_counter() - started

    def grid(parts):
        return torch.cat(parts).numpy().reshape(len(prompts), k)

    return ModelSamples(
        name=loaded.name, path=loaded.path,
        responses=[responses[i * k:(i + 1) * k] for i in range(len(prompts))],
        rewards=grid(rewards).astype(np.float64), gold=grid(golds).astype(np.float64) if gold is not None else None,
        tokens=grid(tokens).astype(np.int64), stopped=grid(stopped).astype(bool),
        kl=grid(kls).astype(np.float64) if kl_note is None else None, kl_note=kl_note, seconds=seconds,
    )


def find_training_log(model_path: str) -> list[dict] | None:
    """The PPO run's per-step metrics (``trainer_state.json`` beside the model, from ppo.py), if there."""
    import json

    path = os.path.join(os.path.expanduser(model_path), "trainer_state.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            history = json.load(handle).get("log_history") or []
    except (OSError, ValueError):
        logger.warning("could not read %s: no training curves", path)
        return None
    history = [h for h in history if "objective/scores" in h and "episode" in h]
    return history or None
