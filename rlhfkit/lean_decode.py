"""A lean decoding loop for Llama models: the same tokens as ``generate``, with a fifth of its operations per step.

Sampling a small model on a CPU is bound by how many operations a decoding step dispatches, not by their
arithmetic: transformers' Llama runs about 70 per layer (its RMSNorm in five, the query, key and value products
apart, a KV cache grown by concatenation, the mask rebuilt every step), each costing microseconds of Python and
dispatch. :func:`generate` runs the prompt through the model itself (transformers' forward pass, its KV cache),
then decodes each token with one product for query, key and value and one for gate and up (the weights
concatenated once per call), ``torch.nn.functional.rms_norm``, the model's own rotary embedding, scaled dot-product
attention over a preallocated KV cache that is written in place, and the LM head called as the module (so its
hooks, e.g. :func:`rlhfkit.sampling.tracing`, see every step). The logits match transformers' to float rounding
(``tests/test_lean_decode.py``).

Token selection is ``generate``'s, step for step: its temperature, top-k and top-p warpers in its order, a softmax
and ``torch.multinomial`` (greedy: ``argmax``), finished rows padded, a stop when every row has produced a stop
token or the length is reached. With the same seed and the same logits the same tokens come out.

The saving is per operation, so it shrinks as the products grow. Measured on CPU (AMD EPYC, 2 cores, float32,
``python bench/decode_step.py``, tokens/s of the loop over ``generate``'s, 45-token prompts and 32 new tokens):
1.47x on stories260K (hidden 64, 32 rows), 1.55x on the embedded default (hidden 192, 8 rows), 1.20x at hidden
384, 1.06x at 512, 0.90-0.96x on a 100M Llama (hidden 768, 8 rows). Hence :data:`MAX_HIDDEN_SIZE` for ``auto``.
Used by ``ppo.py --lean_decode``; :func:`why_not` says when a model cannot be decoded this way, :func:`why_not_auto`
also when it would not be faster (then ``generate`` runs).
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn


def _plain_weight(layer: nn.Module) -> torch.Tensor | None:
    """The weight a linear layer computes with, when that is one plain matrix: an ``nn.Linear`` without bias, or a
    PEFT LoRA layer whose adapters are all merged into its base layer (as ``ppo.py`` samples); else None."""
    base = layer
    if hasattr(layer, "base_layer"):  # PEFT: only a fully merged adapter leaves the base weight as the whole layer
        active = set(getattr(layer, "active_adapters", []) or [])
        if getattr(layer, "disable_adapters", False) or not active <= set(getattr(layer, "merged_adapters", [])):
            return None
        base = layer.base_layer
    if type(base) is not nn.Linear or base.bias is not None:
        return None
    weight = base.weight
    if type(weight) not in (torch.Tensor, nn.Parameter) or tuple(weight.shape) != (base.out_features,
                                                                                     base.in_features):
        return None  # sharded (a DTensor, or ZeRO-3's empty placeholder)
    return weight


def _causal_lm(model: nn.Module) -> nn.Module:
    from rlhfkit.models import unwrap_peft

    return unwrap_peft(model)


def why_not(model: nn.Module, config) -> str | None:
    """None when :func:`generate` can decode with ``model`` under generation ``config``; else the reason."""
    lm = _causal_lm(model)
    if type(lm).__name__ != "LlamaForCausalLM":
        return f"{type(lm).__name__} is not a LlamaForCausalLM"
    c = lm.config
    if c.hidden_act != "silu" or getattr(c, "mlp_bias", False) or getattr(c, "attention_bias", False):
        return "the Llama config has biases or an activation other than silu"
    if getattr(c, "pretraining_tp", 1) not in (None, 1):
        return "the Llama config splits its products (pretraining_tp)"
    if not config.use_cache or getattr(config, "cache_implementation", None) is not None:
        return "generation asks for no cache or a cache implementation of its own"
    if getattr(config, "num_beams", 1) not in (None, 1) or getattr(config, "num_return_sequences", 1) not in (None, 1):
        return "beam search or several sequences per prompt"
    for layer in lm.model.layers:
        attention, mlp = layer.self_attn, layer.mlp
        for linear in (attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj, mlp.gate_proj,
                       mlp.up_proj, mlp.down_proj):
            weight = _plain_weight(linear)
            if weight is None:
                return "a linear layer is not one plain weight (an unmerged adapter, a bias or sharded parameters)"
            if weight.dtype != torch.float32:
                return f"the weights are {weight.dtype}, not float32"
    return None


MAX_HIDDEN_SIZE = 512  # auto: the widest hidden size measured faster with the loop than with generate


def why_not_auto(model: nn.Module, config) -> str | None:
    """:func:`why_not`, or the reason the loop would not be faster: a hidden size over :data:`MAX_HIDDEN_SIZE`,
    where a decoding step is bound by its products' arithmetic rather than by the operations it dispatches."""
    why = why_not(model, config)
    hidden = _causal_lm(model).config.hidden_size
    if why is None and hidden > MAX_HIDDEN_SIZE:
        why = (f"hidden size {hidden} > {MAX_HIDDEN_SIZE}: its decoding step is bound by the products' arithmetic, "
               "where the lean loop is not faster")
    return why


def why_not_here(mode: str, model: nn.Module, config) -> str | None:
    """The sampling scripts' ``--lean_decode auto|off``: None when ``model`` decodes with the loop here (``auto``, a
    CPU, :func:`why_not_auto`), else the reason it samples with ``generate``."""
    if mode == "off":
        return "--lean_decode off"
    device = next(model.parameters()).device
    if device.type != "cpu":
        return f"on {device.type} (measured on CPU only)"
    return why_not_auto(model, config)


def _layer_weights(lm) -> list[dict]:
    """Per decoder layer, what a decoding step needs: the norms, the fused query/key/value and gate/up weights."""
    layers = []
    for layer in lm.model.layers:
        attention, mlp = layer.self_attn, layer.mlp
        layers.append({
            "norm1": layer.input_layernorm, "norm2": layer.post_attention_layernorm,
            "qkv": torch.cat([_plain_weight(attention.q_proj), _plain_weight(attention.k_proj),
                              _plain_weight(attention.v_proj)]),
            "o": _plain_weight(attention.o_proj),
            "gate_up": torch.cat([_plain_weight(mlp.gate_proj), _plain_weight(mlp.up_proj)]),
            "down": _plain_weight(mlp.down_proj),
            "scaling": attention.scaling,
        })
    return layers


def _rms_norm(module, x: torch.Tensor) -> torch.Tensor:
    """transformers' LlamaRMSNorm in one operation: normalised in float32, scaled by the weight."""
    return F.rms_norm(x.float(), (x.shape[-1],), module.weight.float(), module.variance_epsilon).to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The rotary embedding as transformers' Llama applies it (``rotate_half``)."""
    first, second = x.chunk(2, -1)
    return x * cos + torch.cat((-second, first), -1) * sin


def _warpers(config) -> list:
    """``generate``'s sampling warpers for ``config``, in its order (temperature, top-k, top-p)."""
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    if not config.do_sample:
        return []
    warpers = []
    if config.temperature is not None and config.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(config.temperature))
    if config.top_k is not None and config.top_k != 0:
        warpers.append(TopKLogitsWarper(top_k=config.top_k, min_tokens_to_keep=1))
    if config.top_p is not None and config.top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p=config.top_p, min_tokens_to_keep=1))
    return warpers


@torch.no_grad()
def generate(model: nn.Module, queries: torch.Tensor, query_mask: torch.Tensor, config) -> torch.Tensor:
    """The generated tokens (B, T') for left-padded ``queries`` (B, Q) under generation ``config`` (as
    :func:`rlhfkit.sampling.generation_config` builds it), like ``model.generate(...)[:, Q:]``. The caller checks
    :func:`why_not` first."""
    from transformers import DynamicCache

    lm = _causal_lm(model)
    rows, width = queries.shape
    steps = config.max_new_tokens
    stop_ids = torch.tensor(list(config.eos_token_id or []), dtype=torch.long, device=queries.device)
    pad = config.pad_token_id
    warpers = _warpers(config)

    def select(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:  # (B, V) -> (B,), as generate does
        scores = logits.float()
        for warper in warpers:
            scores = warper(ids, scores)
        if config.do_sample:
            return torch.multinomial(F.softmax(scores, dim=-1), num_samples=1).squeeze(1)
        return torch.argmax(scores, dim=-1)

    # 1. the prompt: transformers' own forward pass, positions counted over real tokens as generate counts them
    positions = query_mask.long().cumsum(-1) - 1
    positions.masked_fill_(query_mask == 0, 1)
    cache = DynamicCache(config=lm.config)
    cache_name = "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"  # 5.25 renamed it
    out = lm(input_ids=queries, attention_mask=query_mask, position_ids=positions, use_cache=True, logits_to_keep=1,
             **{cache_name: cache})
    out_ids = torch.full((rows, width + steps), pad, dtype=torch.long, device=queries.device)
    out_ids[:, :width] = queries
    token = select(out.logits[:, -1], queries)
    del out

    # 2. the KV cache, preallocated for every step and written in place; the mask over it (True: attend)
    keys, values = [], []
    for layer_cache in cache.layers:
        k, v = layer_cache.keys, layer_cache.values  # (B, KV heads, Q, D)
        keys.append(k.new_empty(rows, k.shape[1], width + steps, k.shape[3]))
        values.append(v.new_empty(rows, v.shape[1], width + steps, v.shape[3]))
        keys[-1][:, :, :width], values[-1][:, :, :width] = k, v
    del cache
    allowed = torch.ones((rows, 1, 1, width + steps), dtype=torch.bool, device=queries.device)
    allowed[:, 0, 0, :width] = query_mask.bool()
    padded = not bool(query_mask.bool().all())
    weights = _layer_weights(lm)
    heads, kv_heads = lm.config.num_attention_heads, lm.config.num_key_value_heads
    head_dim = keys[0].shape[-1]
    inner = lm.config.intermediate_size
    position = positions[:, -1:]  # (B, 1)
    unfinished = torch.ones(rows, dtype=torch.long, device=queries.device)

    # 3. one token per step
    done = 0
    for step in range(steps):
        if len(stop_ids):
            token = token * unfinished + pad * (1 - unfinished)
        out_ids[:, width + step] = token
        done = step + 1
        if len(stop_ids):
            unfinished = unfinished & ~torch.isin(token, stop_ids)
            if not bool(unfinished.any()):
                break
        if step + 1 == steps:
            break
        length = width + step + 1  # tokens in the cache once this one is in
        position = position + 1
        hidden = lm.model.embed_tokens(token[:, None])  # (B, 1, C)
        cos, sin = lm.model.rotary_emb(hidden, position)
        cos, sin = cos[:, None], sin[:, None]  # (B, 1, 1, D)
        mask = allowed[..., :length] if padded else None
        for i, w in enumerate(weights):
            x = _rms_norm(w["norm1"], hidden)
            qkv = F.linear(x, w["qkv"]).view(rows, 1, heads + 2 * kv_heads, head_dim).transpose(1, 2)
            q, k, v = qkv.split([heads, kv_heads, kv_heads], dim=1)
            keys[i][:, :, length - 1: length] = _rotate(k, cos, sin)
            values[i][:, :, length - 1: length] = v
            attended = F.scaled_dot_product_attention(
                _rotate(q, cos, sin), keys[i][:, :, :length], values[i][:, :, :length], attn_mask=mask,
                scale=w["scaling"], enable_gqa=kv_heads != heads)
            hidden = hidden + F.linear(attended.transpose(1, 2).reshape(rows, 1, heads * head_dim), w["o"])
            gate, up = F.linear(_rms_norm(w["norm2"], hidden), w["gate_up"]).split([inner, inner], dim=-1)
            hidden = hidden + F.linear(F.silu(gate) * up, w["down"])
        logits = lm.lm_head(lm.model.norm(hidden))  # the module: its hooks see every step, as in generate
        token = select(logits[:, -1], out_ids[:, :length])
    return out_ids[:, width: width + done]
