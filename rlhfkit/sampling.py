"""Sampling, one implementation for every script: prompt text, left padding, generation, stop tokens, log-probs.

ppo.py (its rollouts), compare_base_vs_ppo.py and run_generation.py all sample through this module:

* **Prompt text** follows the training format: the chat template (with the generation prompt) when the
  tokenizer has one, else ``Question: ...\\n\\nAnswer:`` as optimum-habana's ``examples/trl`` scripts write it
  (see :func:`rlhfkit.schemas.render_row` for why the trailing space is not part of the prompt); ``raw``
  passes the text as it is. The tokenizer's special tokens (BOS) are added unless a chat template wrote them.
* **Left padding** with an attention mask, so every response starts at the same column and batched greedy
  decoding gives the same text as one prompt at a time.
* **Every sampling setting pinned**: ``generate`` fills each setting left ``None`` from the checkpoint's own
  ``generation_config`` (a repetition penalty, ``no_repeat_ngram_size``, ``min_p``, suppressed tokens,
  ``min_new_tokens``, its EOS ...). Generation here runs against a fresh ``GenerationConfig`` instead, so the
  distribution sampled from is exactly the one :func:`response_logprobs` scores, and two checkpoints compared
  with the same settings sample the same way.
* **Stop tokens**: generation stops at ``stop_ids`` and nowhere else (none: every response runs to
  ``max_new_tokens``); each response is cut after its first stop token (kept) and masked after it.
* **Decoding**: transformers' ``generate``, or on CPU for a Llama (``--lean_decode auto``) the lean loop of
  :mod:`rlhfkit.lean_decode`, which gives the same tokens with a fifth of the operations per step.
* **Log-probs** of the sampled tokens at the sampling temperature. Top-k / top-p truncation is not part of
  them: callers that need log-probs (PPO, the KL of the comparison) refuse or report it instead. They come
  from a forward pass over prompt and response (:func:`response_logprobs`), or from what generation computed
  anyway (``sample(..., trace=True)``: :class:`GenerationTrace`, the LM head's input and output at each
  sampled token, as TRL's PPOTrainer keeps the generation logits).
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass

import torch

from rlhfkit import schemas
from rlhfkit.errors import UserError

logger = logging.getLogger(__name__)

PROMPT_FORMATS = ("auto", "chat", "qa", "raw")


# ------------------------------------------------------------------------------------------ prompt text
def format_prompt(tokenizer, prompt, prompt_format: str = "auto", tools: str = "") -> str:
    """Prompt text for generation from a question (text) or a message list.

    ``auto``: the chat template when the tokenizer has one, else ``qa``; ``chat``: the chat template (an
    error without one); ``qa``: ``Question: ...\\n\\nAnswer:``; ``raw``: text as given. ``tools``: the tool schemas
    (JSON text, as canonical rows carry them), given to the chat template or written as the ``Tools:`` paragraph.
    """
    if prompt_format not in PROMPT_FORMATS:
        raise UserError(f"prompt format {prompt_format} is not one of {', '.join(PROMPT_FORMATS)}")
    if prompt_format == "raw":
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], dict):
            prompt = prompt[0].get("content")  # a dataset's plain prompt, normalised to one user message
        if not isinstance(prompt, str):
            raise UserError("prompt format raw needs text prompts, not conversations: use auto, chat or qa")
        return prompt
    try:
        messages = schemas.prompt_messages(prompt, "prompt")
    except schemas.InvalidRow as err:
        raise UserError(f"bad prompt {prompt!r}: {err}") from None
    if _uses_chat_template(tokenizer, prompt_format):
        if not schemas.has_chat_template(tokenizer):
            raise UserError("prompt format chat: this tokenizer has no chat template (use qa or raw)")
        return schemas.chat_template_text(tokenizer, messages, tools, add_generation_prompt=True)
    return schemas.messages_to_text(messages, tools).rstrip(" ")


def _uses_chat_template(tokenizer, prompt_format: str) -> bool:
    return prompt_format == "chat" or (prompt_format == "auto" and schemas.has_chat_template(tokenizer))


def encode_prompts(tokenizer, prompts: list, prompt_format: str = "auto",
                   tools: list[str] | None = None) -> tuple[list[str], list[list[int]]]:
    """(formatted texts, token ids) of prompts, formatted as in training (``tools``: each prompt's tool schemas);
    the tokenizer's special tokens (BOS) are added unless a chat template wrote them already."""
    tools = tools or [""] * len(prompts)
    formatted = [format_prompt(tokenizer, p, prompt_format, t) for p, t in zip(prompts, tools, strict=True)]
    chat = _uses_chat_template(tokenizer, prompt_format)
    return formatted, tokenizer(formatted, add_special_tokens=not chat)["input_ids"]


@dataclass
class RLPrompts:
    """The RL scripts' prompts (ppo.py, grpo.py, rloo.py), those that fit kept in order: the canonical prompts, their
    plain text (for rule rewards and judges), their tool schemas (or None), the formatted text the policy sees, and
    its token ids."""

    prompts: list
    plain: list[str]
    tools: list[str] | None
    texts: list[str]
    ids: list[list[int]]


def load_rl_prompts(data_args, tokenizer, prompt_format: str, max_length: int, flag: str,
                    limit: int | None = None) -> RLPrompts:
    """Prompts for RL from any prompt schema (``data_args``: dataset, subset, split; the toy task's ``data/rl`` by
    default), formatted by :func:`encode_prompts`; those over ``max_length`` tokens (the script's ``flag``) are
    dropped with a count, and none left is an error. The first prompt, as the policy sees it, is logged."""
    from rlhfkit import data, defaults

    name, subset = defaults.dataset_for("rl", data_args.dataset_name, data_args.subset)
    rows = data.load_canonical(name, "prompt", subset, data_args.split, strict=data_args.error_on_invalid_rows,
                               limit=limit)
    prompts = [row["prompt"] for row in rows]
    tools = rows["tools"] if "tools" in rows.column_names else None
    texts, ids = encode_prompts(tokenizer, prompts, prompt_format, tools)
    keep = [i for i, row in enumerate(ids) if len(row) <= max_length]
    if not keep:
        raise UserError(f"every prompt is longer than {flag} {max_length} tokens (the shortest has "
                        f"{min(len(r) for r in ids)}): raise {flag}")
    if len(keep) < len(ids):
        logger.warning("dropped %d of %d prompts longer than %s %d tokens", len(ids) - len(keep), len(ids), flag,
                    max_length)
    logger.info("prompt format %s: the policy sees prompts as %r; %s", describe_format(prompt_format, tokenizer),
             texts[keep[0]][-200:], "change with --prompt_format raw (as given), qa or chat")
    return RLPrompts([prompts[i] for i in keep], [schemas.prompt_text(prompts[i]) for i in keep],
                     None if tools is None else [tools[i] for i in keep], [texts[i] for i in keep],
                     [ids[i] for i in keep])


def describe_format(prompt_format: str, tokenizer) -> str:
    if prompt_format != "auto":
        return prompt_format
    if schemas.has_chat_template(tokenizer):
        return "auto (the tokenizer's chat template)"
    return "auto -> qa (the tokenizer has no chat template: 'Question: ...\\n\\nAnswer:')"


def left_pad(rows: list[list[int]], pad_token_id: int, device=None, width: int | None = None):
    """(ids, attention mask) of token-id lists, left-padded to the longest row, or to ``width`` (static shapes):
    every response then starts at the same column."""
    width = max(len(r) for r in rows) if width is None else width
    ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):], mask[i, width - len(row):] = torch.tensor(row, dtype=torch.long), 1
    return ids.to(device), mask.to(device)


# ------------------------------------------------------------------------------------------- episodes
@dataclass
class Episodes:
    prompts: list  # prompts as the dataset gave them (for rule rewards and logs)
    queries: torch.Tensor  # (B, Q) left-padded prompt ids
    query_mask: torch.Tensor  # (B, Q)
    responses: torch.Tensor  # (B, T) truncated after the stop token, padded after it
    response_mask: torch.Tensor  # (B, T) 1 on real response tokens, the stop token included
    stopped: torch.Tensor  # (B,) a stop token was produced
    response_texts: list[str]
    trace: GenerationTrace | None = None  # what generation computed for each response token (sample(trace=True))

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


# ----------------------------------------------------------------------------------------- generation
def generation_config(max_new_tokens: int, stop_ids: list[int], pad_token_id: int, do_sample: bool = True,
                      temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, fixed_length: bool = False,
                      static_cache: bool = False, use_cache: bool = True):
    """The generation settings, built from scratch (``do_sample=False``: greedy decoding).

    ``stop_ids`` are the only tokens generation stops at (``[]``: none, every response ``max_new_tokens`` long).
    ``fixed_length`` (static shapes): generation does not stop at the stop tokens either, so every response has
    ``max_new_tokens`` tokens; :func:`truncate` then cuts each after its first stop token as usual. Each token up
    to and including the stop token is sampled from the same distribution either way (stopping only skips what
    comes after), so the episodes mean the same; the cost is the tokens generated past the stop.
    ``static_cache``: a KV cache of fixed size, so every decoding step has the same shapes (for HPU graphs)."""
    from transformers import GenerationConfig

    sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p) if do_sample else dict(
        temperature=None, top_k=None, top_p=None)
    extra = {"cache_implementation": "static"} if static_cache else {}
    return GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=do_sample, eos_token_id=[] if fixed_length else list(stop_ids),
        pad_token_id=pad_token_id, use_cache=use_cache, bos_token_id=None, **sampling, **extra,
    )


@contextlib.contextmanager
def pinned_settings(model):
    """Generation with nothing inherited from the checkpoint: while inside, the transformers model's own
    ``generation_config`` (which ``generate`` reads every unset field from) is a fresh, default one."""
    from transformers import GenerationConfig

    target = model.get_base_model() if hasattr(model, "get_base_model") else model  # inside a PEFT wrapper
    saved = target.generation_config
    target.generation_config = GenerationConfig()
    try:
        yield
    finally:
        target.generation_config = saved


@dataclass
class GenerationTrace:
    """The LM head's input and output at the position that predicted each generated token, recorded while
    ``generate`` ran: ``hidden[t]`` (B, H), the final hidden state, and ``logits[t]`` (B, V), the raw logits
    (before temperature) that token ``t`` was sampled from. A forward pass over prompt and response computes the
    same two things at the same positions (the mask and positions are the ones generation used); only the order
    of floating-point sums differs, a cached decoding step against the whole sequence at once."""
    hidden: list[torch.Tensor]
    logits: list[torch.Tensor]

    def logprobs(self, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
        """(B, T) log-probs of ``tokens`` (B, T) at ``temperature``, one step at a time (no (B, T, V) copy)."""
        return torch.cat([logprobs_from_logits(self.logits[t].unsqueeze(1), tokens[:, t: t + 1], temperature)
                          for t in range(tokens.shape[1])], 1)

    def hidden_states(self) -> torch.Tensor:
        """(B, T, H) final hidden states, the ones a value head on the trunk reads."""
        return torch.stack(self.hidden, 1)


@contextlib.contextmanager
def tracing(model, into: list):
    """While inside, each call of ``model``'s LM head (its output embeddings) appends ``(hidden, logits)`` at the
    last position to ``into``: one pair per generated token during ``generate`` (the prompt's pass keeps only its
    last position, the one that predicts the first token)."""
    from rlhfkit.models import unwrap_peft

    def keep_last(module, args, output):
        into.append((args[0][:, -1].detach(), output[:, -1].detach()))

    handle = unwrap_peft(model).get_output_embeddings().register_forward_hook(keep_last)
    try:
        yield
    finally:
        handle.remove()


def _trace_of(calls: list, width: int) -> GenerationTrace:
    """The trace of a generation of ``width`` tokens from the head calls it made: the first ``width`` of them.
    (A process whose sequences finished early may keep calling the model while the others in its group run on,
    DeepSpeed ZeRO-3 and FSDP's synced generation; those later calls generate nothing.)"""
    if len(calls) < width:
        raise RuntimeError(f"generation called the LM head {len(calls)} times for {width} tokens: this model's "
                           "generation cannot be traced; use --rollout_logprobs forward")
    return GenerationTrace([h for h, _ in calls[:width]], [logits for _, logits in calls[:width]])


@torch.no_grad()
def generate(model, queries: torch.Tensor, query_mask: torch.Tensor, config, batched: bool = True,
             lean: bool = False) -> torch.Tensor:
    """Sampled responses (B, T'), right-padded with the pad id; ``batched=False`` runs one prompt at a time
    (optimum-habana's ``--batched_gen False``: no padding in the prompt at all, slower). ``lean``: decode with
    :func:`rlhfkit.lean_decode.generate` (the caller has checked :func:`rlhfkit.lean_decode.why_not`)."""
    width = queries.shape[1]
    if lean and batched:
        from rlhfkit import lean_decode

        return lean_decode.generate(model, queries, query_mask, config)
    with pinned_settings(model):
        if batched:
            return model.generate(input_ids=queries, attention_mask=query_mask, generation_config=config)[:, width:]
        rows = []
        for ids, mask in zip(queries, query_mask, strict=True):
            real = ids[mask.bool()].unsqueeze(0)
            out = model.generate(input_ids=real, attention_mask=torch.ones_like(real), generation_config=config)
            rows.append(out[0, real.shape[1]:])
    longest = max(len(r) for r in rows)
    return torch.stack([torch.nn.functional.pad(r, (0, longest - len(r)), value=config.pad_token_id) for r in rows])


def truncate(responses: torch.Tensor, stop_ids: list[int], pad_token_id: int):
    """(responses, mask, stopped): each response cut after its first stop token (kept) and padded after it.

    The mask is 1 on real tokens, the stop token included; with no stop ids every token is real (generation
    never stopped, so there is no padding). Generation may write anything after a stop (other sequences of the
    batch are still running); none of it may count."""
    stop = torch.zeros_like(responses, dtype=torch.bool)
    for token_id in stop_ids:
        stop |= responses == token_id
    stopped = stop.any(-1)
    width = responses.shape[1]
    positions = torch.arange(width, device=responses.device).expand_as(responses)
    first = torch.where(stop, positions, torch.full_like(positions, width)).min(-1).values
    lengths = torch.where(stopped, first + 1, torch.full_like(first, width))
    mask = positions < lengths.unsqueeze(-1)
    return responses.masked_fill(~mask, pad_token_id), mask.long(), stopped


@torch.no_grad()
def sample(model, tokenizer, prompts: list, queries: torch.Tensor, query_mask: torch.Tensor, config,
           stop_ids: list[int], batched: bool = True, trace: bool = False, lean: bool = False) -> Episodes:
    """Generate for a batch of left-padded prompts, truncate after the stop token and decode the responses.
    ``trace``: keep what generation computed for each response token (``Episodes.trace``; batched only);
    ``lean``: see :func:`generate`."""
    if trace and not batched:
        raise ValueError("a generation trace needs batched generation")
    calls: list = []
    with tracing(model, calls) if trace else contextlib.nullcontext():
        responses = generate(model, queries, query_mask, config, batched, lean)
    responses, response_mask, stopped = truncate(responses, stop_ids, tokenizer.pad_token_id)
    texts = tokenizer.batch_decode(responses.masked_fill(response_mask == 0, tokenizer.pad_token_id),
                                   skip_special_tokens=True)
    return Episodes(list(prompts), queries, query_mask, responses, response_mask, stopped, texts,
                    _trace_of(calls, responses.shape[1]) if trace else None)


# ------------------------------------------------------------------------------------------- log-probs
def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, as ``generate`` does for left-padded prompts."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Log-probability of each of ``tokens`` (B, T) under ``logits`` (B, T, V) divided by ``temperature``.

    The same temperature that sampled the tokens: a policy sampled at 0.7 but scored at 1.0 gives wrong
    ratios and a wrong KL (a pitfall listed by Huang et al. 2024). Computed in float32.
    """
    logits = logits.float() / temperature
    return torch.gather(logits.log_softmax(-1), 2, tokens.unsqueeze(-1)).squeeze(-1)


@torch.no_grad()
def response_logprobs(model, episodes: Episodes, temperature: float) -> torch.Tensor:
    """(B, T) log-probs of the response tokens under a causal LM at ``temperature`` (the logits at position
    ``t`` predict token ``t + 1``, so the responses are predicted by the last ``T + 1`` positions but one)."""
    width = episodes.responses.shape[1]
    mask = episodes.attention_mask
    logits = model(input_ids=episodes.input_ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                   use_cache=False, logits_to_keep=width + 1).logits[:, -(width + 1): -1]
    return logprobs_from_logits(logits, episodes.responses, temperature)


def lean_for(mode: str, model, config) -> bool:
    """Whether ``model`` samples with :mod:`rlhfkit.lean_decode` under ``--lean_decode mode`` (logged either way)."""
    from rlhfkit import lean_decode

    why = lean_decode.why_not_here(mode, model, config)
    if why is None:
        logger.info("sampling with the lean Llama decoding loop (--lean_decode %s)", mode)
    elif mode != "off":
        logger.info("sampling with transformers' generate (--lean_decode %s: %s)", mode, why)
    return why is None


# ---------------------------------------------------------------------------------------- text in, text out
@dataclass
class GenerationResult:
    prompts: list[str]  # the formatted prompt texts
    completions: list[list[str]]  # completions[i] holds num_return_sequences texts for prompts[i]
    new_tokens: int
    seconds: float
    decoding: str = "generate"  # "lean" (rlhfkit.lean_decode) or "generate"

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


def generate_text(model, tokenizer, prompts: list, prompt_format: str = "auto", max_new_tokens: int = 64,
                  batch_size: int = 8, do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                  top_k: int = 0, num_return_sequences: int = 1, use_cache: bool = True, progress=None,
                  static_shapes: bool = False, lean_decode: str = "off") -> GenerationResult:
    """Completions of ``prompts`` (questions, texts or message lists, formatted by ``prompt_format``) in batches.

    Stops at the model's EOS (the tokenizer's and the checkpoint's end-of-turn ids); special tokens are dropped
    from the text. ``progress`` is called with the number of prompts done after each batch. ``static_shapes``
    (HPU graphs): every batch is left-padded to the longest prompt of the run and decodes with a static KV cache,
    so each step of each batch has the same shapes (one graph for the prompt, one for the decoding steps; a last,
    smaller batch adds a pair). ``lean_decode`` (``auto|off``): :func:`lean_for`."""
    from rlhfkit.models import ensure_pad_token, stop_token_ids

    ensure_pad_token(tokenizer)  # batches need one; masks make EOS as pad harmless here
    texts, ids = encode_prompts(tokenizer, prompts, prompt_format)
    device = next(model.parameters()).device
    stop_ids = stop_token_ids("eos", tokenizer, model.generation_config)
    config = generation_config(max_new_tokens, stop_ids, tokenizer.pad_token_id, do_sample=do_sample,
                               temperature=temperature, top_k=top_k, top_p=top_p, static_cache=static_shapes,
                               use_cache=use_cache)
    width = max(len(row) for row in ids) if static_shapes else None
    lean = lean_for(lean_decode, model, config)
    completions: list[list[str]] = []
    new_tokens = 0
    start = time.perf_counter()
    model.eval()
    per_batch = batch_size  # prompts per batch, each repeated num_return_sequences times
    for first in range(0, len(ids), per_batch):
        rows = [row for row in ids[first: first + per_batch] for _ in range(num_return_sequences)]
        queries, query_mask = left_pad(rows, tokenizer.pad_token_id, device, width)
        episodes = sample(model, tokenizer, rows, queries, query_mask, config, stop_ids, lean=lean)
        new_tokens += int(episodes.response_mask.sum())
        for i, text in enumerate(episodes.response_texts):
            if i % num_return_sequences == 0:
                completions.append([])
            completions[-1].append(text.strip())
        if progress is not None:
            progress(min(first + per_batch, len(ids)))
    return GenerationResult(texts, completions, new_tokens, time.perf_counter() - start,
                            "lean" if lean else "generate")
