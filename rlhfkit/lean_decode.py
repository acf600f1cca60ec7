"""A lean decoding loop for Llama models: the same tokens as ``generate``, with a fifth of its operations per step
and, on a CPU, its large products through oneDNN.

Sampling a small model on a CPU is bound by how many operations a decoding step dispatches, not by their
arithmetic: transformers' Llama runs about 70 per layer (its RMSNorm in five, the query, key and value products
apart, a KV cache grown by concatenation, the mask rebuilt every step), each costing microseconds of Python and
dispatch. :func:`generate` runs the prompt through the model itself (transformers' forward pass, its KV cache),
then decodes each token with ``torch.nn.functional.rms_norm``, the model's own rotary embedding, scaled dot-product
attention over a preallocated KV cache that is written in place, the products of :class:`_Product` and the LM head
called as the module (so its hooks, e.g. :func:`rlhfkit.sampling.tracing`, see every step). The logits match
transformers' to float rounding (``tests/test_lean_decode.py``).

The products: small weights as one product for query, key and value and one for gate and up (the weights
concatenated once per call, a LoRA adapter folded in); large weights read where they lie (nothing copied), each
through oneDNN on a CPU, whose product of a few rows by a large float32 weight takes 0.3-0.85x the time of MKL's
(``F.linear``), plus an unmerged adapter's two thin products. So a policy decodes lean with its adapter merged,
unmerged (as PPO's reference: disabled) or without one.

Token selection is ``generate``'s, step for step: its temperature, top-k and top-p warpers in its order, a softmax
and ``torch.multinomial`` (greedy: ``argmax``), finished rows padded, a stop when every row has produced a stop
token or the length is reached. With the same seed and the same logits the same tokens come out.

Measured on CPU (AMD EPYC, 2 cores, float32, ``python bench/decode_step.py``: tokens/s of the loop over
``generate``'s, 45-token prompts, 32 new tokens, 8 rows; ``bench/results/cpu-2026-12-05-decode-step-onednn.md``):
1.46x on stories260K (hidden 64, 32 rows), 1.56x on the embedded default (hidden 192), 1.16x at hidden 512, 1.44x
on a 100M Llama (hidden 768; 1.21x with an unmerged rank-16 adapter), 1.50-1.79x at hidden 768-2,048 with
32,000-token vocabularies. Without oneDNN's products (all through ``F.linear``, as under autocast) the loop was
1.06x at 512 and 0.90-0.96x at 768 (``cpu-2026-12-05-decode-step.md``): hence :data:`MAX_HIDDEN_SIZE` there.
Used by ``ppo.py``, ``run_generation.py`` and ``compare_base_vs_ppo.py`` (``--lean_decode``); :func:`why_not` says
when a model cannot be decoded this way, :func:`why_not_auto` also when it would not be faster (then ``generate``
runs).
"""

from __future__ import annotations

import contextlib
import inspect

import torch
import torch.nn.functional as F
from torch import nn


def _linear_source(layer: nn.Module) -> tuple[nn.Linear, str | None] | None:
    """(its base ``nn.Linear``, the name of an unmerged adapter or None) for a linear layer the loop can compute:
    an ``nn.Linear`` without bias; a PEFT LoRA layer whose adapters are all merged, or disabled (the base weight
    alone); or one with a single plain LoRA adapter, unmerged (the base weight plus ``scale B A``: folded into a
    per-call weight, or its two thin products added, as :class:`_Product` decides). Else None."""
    from rlhfkit import fused_lora

    base, adapter = layer, None
    if hasattr(layer, "base_layer"):  # PEFT
        base = layer.base_layer
        active = set(getattr(layer, "active_adapters", []) or [])
        merged = set(getattr(layer, "merged_adapters", []) or [])
        if getattr(layer, "disable_adapters", False):
            if merged:
                return None  # PEFT takes merged adapters back out on the fly
        elif not active <= merged:
            if merged or not fused_lora.foldable(layer, inference=not layer.training):
                return None
            adapter = next(iter(active))
    if type(base) is not nn.Linear or base.bias is not None:
        return None
    weight = base.weight
    if type(weight) not in (torch.Tensor, nn.Parameter) or tuple(weight.shape) != (base.out_features,
                                                                                     base.in_features):
        return None  # sharded (a DTensor, or ZeRO-3's empty placeholder)
    return base, adapter


def _weight(layer: nn.Module) -> torch.Tensor:
    """The weight (out, in) ``layer`` computes with (the caller checked :func:`_linear_source`)."""
    base, adapter = _linear_source(layer)
    if adapter is None:
        return base.weight
    return torch.addmm(base.weight, layer.lora_B[adapter].weight, layer.lora_A[adapter].weight,
                       alpha=layer.scaling[adapter])


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
            source = _linear_source(linear)
            if source is None:
                return ("a linear layer is neither one plain weight nor a weight with one plain LoRA adapter (a "
                        "bias, several or DoRA adapters, or sharded parameters)")
            if source[0].weight.dtype != torch.float32:
                return f"the weights are {source[0].weight.dtype}, not float32"
    return None


MAX_HIDDEN_SIZE = 512  # auto without oneDNN: the widest hidden size measured faster with the loop than generate


def why_not_auto(model: nn.Module, config) -> str | None:
    """:func:`why_not`, or the reason the loop would not be faster: a hidden size over :data:`MAX_HIDDEN_SIZE`
    where its large products cannot go through oneDNN (autocast, another device, a torch build without it): there a
    decoding step is bound by the products' arithmetic, which the loop then computes as ``generate`` does."""
    why = why_not(model, config)
    lm = _causal_lm(model)
    hidden = lm.config.hidden_size
    if why is None and hidden > MAX_HIDDEN_SIZE and not _onednn(next(lm.parameters()).device):
        why = (f"hidden size {hidden} > {MAX_HIDDEN_SIZE} without oneDNN's products (autocast, or a torch build "
               "without oneDNN): the lean loop is not faster there")
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


MIN_ONEDNN_ELEMENTS = 1 << 19  # a weight this large multiplies through oneDNN, in place (see _Product)


def _onednn(device: torch.device) -> bool:
    """Whether decoding on ``device`` can multiply through oneDNN's linear operation: a CPU, a torch build that
    has it (x86 builds do), and no autocast (whose casts it would bypass)."""
    if device.type != "cpu" or torch.is_autocast_enabled("cpu"):
        return False
    try:
        return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._linear_pointwise is not None
    except (AttributeError, RuntimeError):
        return False


def _onednn_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``F.linear(x, weight)`` (no bias) through oneDNN, reading the float32 weight where it lies."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], "")


class _Product:
    """The outputs of one or more linear layers on the same input, concatenated in their order (query/key/value,
    gate/up), as one call of a decoding step.

    Small weights (all under :data:`MIN_ONEDNN_ELEMENTS`): one product with the weights concatenated, adapters folded
    in, built once per call; a small model's step is bound by how many operations it dispatches, and these copies
    are small. Larger weights are never copied: each layer's weight is read where it lies, through oneDNN on a CPU,
    plus the adapter's two thin products when one is unmerged. A decoding step multiplies a few rows by every weight,
    and MKL's float32 product (``F.linear`` on CPU) is slow in that shape: measured on CPU (AMD EPYC, 2 cores, 8 rows,
    cache-warm), oneDNN took 0.75-0.86x MKL's time for weights of 768 x 768 to 2,560 x 768, 0.45x at 5,120 x 768 and
    0.29-0.42x for LM heads of 32,000 x 768 to 2,048; 1.06-2.9x for weights of 442k elements or fewer (the call's
    fixed cost). oneDNN's products round differently from MKL's (the same sums in another order)."""

    def __init__(self, layers: list[nn.Module], onednn: bool):
        sources = [_linear_source(layer) for layer in layers]
        large = [base.weight.numel() >= MIN_ONEDNN_ELEMENTS for base, _ in sources]
        self.weight, self.pieces = None, []
        if not any(large):
            self.weight = torch.cat([_weight(layer) for layer in layers]) if len(layers) > 1 else _weight(layers[0])
            return
        for layer, (base, adapter), big in zip(layers, sources, large, strict=True):
            lora = None if adapter is None else (layer.lora_A[adapter].weight, layer.lora_B[adapter].weight,
                                                 layer.scaling[adapter])
            self.pieces.append((base.weight, _onednn_linear if onednn and big else F.linear, lora))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight is not None:
            return F.linear(x, self.weight)
        outs = []
        for weight, linear, lora in self.pieces:
            out = linear(x, weight)
            if lora is not None:  # x W^T + s (x A^T) B^T, as PEFT computes an unmerged adapter
                a, b, scale = lora
                out = out + F.linear(F.linear(x, a), b) * scale
            outs.append(out)
        return torch.cat(outs, -1) if len(outs) > 1 else outs[0]


def _layer_products(lm) -> list[dict]:
    """Per decoder layer, what a decoding step needs: the norms and the products (query/key/value, output,
    gate/up, down), built once per call."""
    onednn = _onednn(next(lm.parameters()).device)
    layers = []
    for layer in lm.model.layers:
        attention, mlp = layer.self_attn, layer.mlp
        layers.append({
            "norm1": layer.input_layernorm, "norm2": layer.post_attention_layernorm,
            "qkv": _Product([attention.q_proj, attention.k_proj, attention.v_proj], onednn),
            "o": _Product([attention.o_proj], onednn),
            "gate_up": _Product([mlp.gate_proj, mlp.up_proj], onednn),
            "down": _Product([mlp.down_proj], onednn),
            "scaling": attention.scaling,
        })
    return layers


@contextlib.contextmanager
def _lm_head_through_onednn(lm):
    """While inside, a large plain LM head computes through oneDNN (:class:`_Product`), still called as the module,
    so its hooks see every step."""
    head = lm.lm_head
    source = _linear_source(head)  # a plain nn.Linear without bias is its own base, with no adapter
    big = (source is not None and source[0] is head and head.weight.dtype == torch.float32
           and head.weight.numel() >= MIN_ONEDNN_ELEMENTS)
    if not big or not _onednn(head.weight.device) or "forward" in head.__dict__:
        yield
        return
    head.forward = lambda hidden: _onednn_linear(hidden, head.weight)
    try:
        yield
    finally:
        del head.forward


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
    lm = _causal_lm(model)
    with _lm_head_through_onednn(lm):
        return _decode(lm, queries, query_mask, config)


def _decode(lm: nn.Module, queries: torch.Tensor, query_mask: torch.Tensor, config) -> torch.Tensor:
    from transformers import DynamicCache

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
    # (each prompt layer released once copied: the two caches never coexist whole)
    keys, values = [], []
    while cache.layers:
        layer_cache = cache.layers.pop(0)
        k, v = layer_cache.keys, layer_cache.values  # (B, KV heads, Q, D)
        keys.append(k.new_empty(rows, k.shape[1], width + steps, k.shape[3]))
        values.append(v.new_empty(rows, v.shape[1], width + steps, v.shape[3]))
        keys[-1][:, :, :width], values[-1][:, :, :width] = k, v
        del layer_cache, k, v
    del cache
    allowed = torch.ones((rows, 1, 1, width + steps), dtype=torch.bool, device=queries.device)
    allowed[:, 0, 0, :width] = query_mask.bool()
    padded = not bool(query_mask.bool().all())
    weights = _layer_products(lm)
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
            qkv = w["qkv"](x).view(rows, 1, heads + 2 * kv_heads, head_dim).transpose(1, 2)
            q, k, v = qkv.split([heads, kv_heads, kv_heads], dim=1)
            keys[i][:, :, length - 1: length] = _rotate(k, cos, sin)
            values[i][:, :, length - 1: length] = v
            attended = F.scaled_dot_product_attention(
                _rotate(q, cos, sin), keys[i][:, :, :length], values[i][:, :, :length], attn_mask=mask,
                scale=w["scaling"], enable_gqa=kv_heads != heads)
            hidden = hidden + w["o"](attended.transpose(1, 2).reshape(rows, 1, heads * head_dim))
            gate, up = w["gate_up"](_rms_norm(w["norm2"], hidden)).split([inner, inner], dim=-1)
            hidden = hidden + w["down"](F.silu(gate) * up)
        logits = lm.lm_head(lm.model.norm(hidden))  # the module: its hooks see every step, as in generate
        token = select(logits[:, -1], out_ids[:, :length])
    return out_ids[:, width: width + done]
