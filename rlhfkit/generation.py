"""Batched generation shared by run_generation.py, the comparison script and the tests.

Prompts are left-padded with an explicit attention mask, so batched greedy decoding gives the same text as
one prompt at a time. Prompt text follows the training format: the chat template (with the generation
prompt) when the tokenizer has one, else the seed's ``Question: ...\\n\\nAnswer:`` (see
:func:`rlhfkit.schemas.render_row` for why the trailing space is not part of the prompt).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from rlhfkit import schemas
from rlhfkit.errors import UserError


@dataclass
class GenerationResult:
    prompts: list[str]
    completions: list[list[str]]  # completions[i] holds num_return_sequences texts for prompts[i]
    new_tokens: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


PROMPT_FORMATS = ("auto", "chat", "qa", "raw")


def format_prompt(tokenizer, prompt, prompt_format: str = "auto") -> str:
    """Prompt text for generation from a question (text) or a message list.

    ``auto``: the chat template when the tokenizer has one, else ``qa``; ``chat``: the chat template (an
    error without one); ``qa``: the seed's ``Question: ...\\n\\nAnswer:``; ``raw``: text as given.
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
    if prompt_format == "chat" or (prompt_format == "auto" and schemas.has_chat_template(tokenizer)):
        if not schemas.has_chat_template(tokenizer):
            raise UserError("prompt format chat: this tokenizer has no chat template (use qa or raw)")
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return schemas.messages_to_text(messages).rstrip(" ")


def encode_prompts(tokenizer, prompts: list, prompt_format: str = "auto") -> tuple[list[str], list[list[int]]]:
    """(formatted texts, token ids) of prompts, formatted as in training; the tokenizer's special tokens (BOS)
    are added unless a chat template wrote them already."""
    formatted = [format_prompt(tokenizer, p, prompt_format) for p in prompts]
    chat = prompt_format == "chat" or (prompt_format == "auto" and schemas.has_chat_template(tokenizer))
    return formatted, tokenizer(formatted, add_special_tokens=not chat)["input_ids"]


def generate(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int = 64,
    batch_size: int = 8,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    num_return_sequences: int = 1,
    use_cache: bool = True,
    progress=None,
    static_shapes: bool = False,
) -> GenerationResult:
    """Generate for already formatted ``prompts`` in batches; returns the new text only.

    Stops at the model's EOS; special tokens are dropped from the decoded text. ``progress`` is called with
    the number of prompts done after each batch. ``static_shapes`` (for HPU graphs): every batch is left-padded
    to the longest prompt of the whole run and decodes with a static KV cache, so each step of each batch has
    the same shapes (one graph for the prompt, one for the decoding steps; a last, smaller batch adds a pair).
    """
    import torch

    from rlhfkit.models import ensure_pad_token

    ensure_pad_token(tokenizer)  # batches need one; masks make EOS as pad harmless here
    device = next(model.parameters()).device
    add_special = not schemas.has_chat_template(tokenizer)  # a chat template writes its own BOS
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    settings = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, use_cache=use_cache,
                    num_return_sequences=num_return_sequences, pad_token_id=tokenizer.pad_token_id)
    if do_sample:
        settings.update(temperature=temperature, top_p=top_p, top_k=top_k)
    else:
        settings.update(temperature=None, top_p=None, top_k=None)
    padding: dict = {"padding": True}
    if static_shapes:
        width = max(len(ids) for ids in tokenizer(list(prompts), add_special_tokens=add_special)["input_ids"])
        padding = {"padding": "max_length", "max_length": width}
        settings.update(cache_implementation="static")
    completions: list[list[str]] = []
    new_tokens = 0
    start = time.perf_counter()
    model.eval()
    try:
        for first in range(0, len(prompts), batch_size):
            batch = prompts[first : first + batch_size]
            enc = tokenizer(batch, return_tensors="pt", add_special_tokens=add_special, **padding).to(device)
            with torch.no_grad():
                out = model.generate(**enc, **settings)
            generated = out[:, enc["input_ids"].shape[1] :]
            eos = _eos_ids(model, tokenizer)
            for row in range(generated.shape[0]):
                ids = generated[row].tolist()
                cut = next((i for i, t in enumerate(ids) if t in eos), len(ids))
                new_tokens += cut + (1 if cut < len(ids) else 0)
                if row % num_return_sequences == 0:
                    completions.append([])
                completions[-1].append(tokenizer.decode(ids[:cut], skip_special_tokens=True).strip())
            if progress is not None:
                progress(min(first + batch_size, len(prompts)))
    finally:
        tokenizer.padding_side = old_side
    return GenerationResult(list(prompts), completions, new_tokens, time.perf_counter() - start)


def _eos_ids(model, tokenizer) -> set[int]:
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids
