"""One batch of episodes: generate, truncate at the stop token, score, and the log-probs and values PPO needs.

Prompts are left-padded (so every response starts at the same column) with a pad token distinct from EOS:
masks come from the attention mask and the stop-token position, never from comparing ids with the pad id.
Sampling uses ``temperature``, ``top_k`` and ``top_p`` from a fresh ``GenerationConfig`` (a checkpoint's own
generation settings, such as a repetition penalty, would make the sampling distribution differ from the
one the log-probs are computed from); the same temperature divides the logits in :func:`forward`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhfkit.ppo import core
from rlhfkit.ppo.policy import position_ids_from_mask


@dataclass
class Episodes:
    prompts: list  # raw prompts as the dataset gave them (for rule rewards and logs)
    queries: torch.Tensor  # (B, Q) left-padded prompt ids
    query_mask: torch.Tensor  # (B, Q)
    responses: torch.Tensor  # (B, T) truncated after the stop token, padded after it
    response_mask: torch.Tensor  # (B, T) 1 on real response tokens, the stop token included
    stopped: torch.Tensor  # (B,) a stop token was produced
    response_texts: list[str]

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.queries, self.responses], 1)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.query_mask, self.response_mask], 1)

    def select(self, index: torch.Tensor) -> Episodes:
        rows = index.tolist()
        return Episodes([self.prompts[i] for i in rows], self.queries[index], self.query_mask[index],
                        self.responses[index], self.response_mask[index], self.stopped[index],
                        [self.response_texts[i] for i in rows])


def generation_config(max_new_tokens: int, temperature: float, top_k: int, top_p: float, stop_ids: list[int],
                      pad_token_id: int, do_sample: bool = True, fixed_length: bool = False,
                      static_cache: bool = False):
    """Sampling settings built from scratch (``do_sample=False``: greedy decoding, for evaluation only).

    ``fixed_length`` (static shapes): generation does not stop at the stop tokens, so every response has
    ``max_new_tokens`` tokens; :func:`truncate` then cuts each after its first stop token as usual. Each token up
    to and including the stop token is sampled from the same distribution either way (stopping only skips what
    comes after), so the episodes mean the same; the cost is the tokens generated past the stop.
    ``static_cache``: a KV cache of fixed size, so every decoding step has the same shapes (for HPU graphs)."""
    from transformers import GenerationConfig

    sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p) if do_sample else dict(
        temperature=None, top_k=None, top_p=None)
    extra = {"cache_implementation": "static"} if static_cache else {}
    # no stop tokens: [] (generate fills a None from the checkpoint's own generation config, EOS included)
    return GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=do_sample, eos_token_id=[] if fixed_length else stop_ids or None,
        pad_token_id=pad_token_id, use_cache=True, bos_token_id=None, repetition_penalty=1.0, **sampling, **extra,
    )


def left_pad(rows: list[list[int]], pad_token_id: int, device=None, width: int | None = None):
    """(ids, attention mask) of token-id lists, left-padded to the longest row, or to ``width`` (static shapes):
    every response then starts at the same column."""
    width = max(len(r) for r in rows) if width is None else width
    ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):], mask[i, width - len(row):] = torch.tensor(row, dtype=torch.long), 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def generate(policy, queries: torch.Tensor, query_mask: torch.Tensor, config, batched: bool = True) -> torch.Tensor:
    """Sampled responses (B, T'), right-padded with the pad id; ``batched=False`` runs one prompt at a time
    (the seed's ``--batched_gen False``: no padding in the prompt at all, slower)."""
    pad = config.pad_token_id
    width = queries.shape[1]
    if batched:
        out = policy.generate(input_ids=queries, attention_mask=query_mask, generation_config=config)
        return out[:, width:]
    rows = []
    for ids, mask in zip(queries, query_mask, strict=True):
        real = ids[mask.bool()].unsqueeze(0)
        out = policy.generate(input_ids=real, attention_mask=torch.ones_like(real), generation_config=config)
        rows.append(out[0, real.shape[1] :])
    longest = max(len(r) for r in rows)
    return torch.stack([core.pad_to(r, longest, pad) for r in rows])


def truncate(responses: torch.Tensor, stop_ids: list[int], pad_token_id: int):
    """(responses, mask, stopped): :func:`core.truncate_after_stop` (everything real when there is no stop)."""
    if not stop_ids:
        mask = torch.ones_like(responses)
        return responses, mask, torch.zeros(responses.shape[0], dtype=torch.bool, device=responses.device)
    truncated, mask, _, stopped = core.truncate_after_stop(responses, stop_ids, pad_token_id)
    return truncated, mask, stopped


@torch.no_grad()
def sample(policy, tokenizer, prompts: list, queries: torch.Tensor, query_mask: torch.Tensor, config,
           stop_ids: list[int], batched: bool = True) -> Episodes:
    """Generate for a batch of left-padded prompts, truncate after the stop token and decode the responses."""
    responses = generate(policy, queries, query_mask, config, batched)
    responses, response_mask, stopped = truncate(responses, stop_ids, tokenizer.pad_token_id)
    texts = tokenizer.batch_decode(responses.masked_fill(response_mask == 0, tokenizer.pad_token_id),
                                   skip_special_tokens=True)
    return Episodes(list(prompts), queries, query_mask, responses, response_mask, stopped, texts)


def forward(model, episodes: Episodes, temperature: float):
    """(logprobs, values, logits) of the response tokens under ``model`` (a :class:`PolicyAndValue`).

    The logits at position ``t`` predict token ``t + 1``, so the response tokens are predicted by the last
    ``T + 1`` positions but one.
    """
    width = episodes.responses.shape[1]
    logits, values = model(episodes.input_ids, episodes.attention_mask, keep=width + 1)
    logits, values = logits[:, :-1], values[:, :-1]
    return core.logprobs_from_logits(logits, episodes.responses, temperature), values, logits


@torch.no_grad()
def reference_logprobs(ref_model, episodes: Episodes, temperature: float) -> torch.Tensor:
    """Log-probs of the response tokens under the frozen reference, with the policy's temperature."""
    width = episodes.responses.shape[1]
    mask = episodes.attention_mask
    logits = ref_model(input_ids=episodes.input_ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                       use_cache=False, logits_to_keep=width + 1).logits[:, -(width + 1) : -1]
    return core.logprobs_from_logits(logits, episodes.responses, temperature)
