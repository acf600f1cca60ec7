"""LoRA layers computed in fewer operations than PEFT's form: folded into the weight where that is cheaper, else
PEFT's own products in one autograd function.

PEFT computes a LoRA linear layer as ``x W^T + s (x A^T) B^T``: the base product, two thin products, a scale and
an add, and in the backward pass five more products. :func:`fused` computes it one of two ways instead:

* **folded**: ``x (W + s B A)^T``. The folded weight is built for each call (``r n m`` multiply-adds, independent
  of the number of tokens), the backward pass takes the folded weight's gradient (``n m`` per token) and from it,
  once per call, the gradients of ``A`` and ``B``; ``W`` stays frozen and the result is the same up to float
  rounding.
* **products** (:class:`LoRAProducts`): PEFT's three products, in one autograd function. The adapter's output is
  added into the base product's output in place (``addmm_``), so the forward pass allocates one output where
  PEFT's allocates four; only the layer's input is kept for the backward pass (``x A^T``, a rank-``r`` product, is
  recomputed there), where PEFT keeps the input and ``x A^T`` and autograd's graph holds the scale and the add.
  Same multiply-adds as PEFT's form, same result up to float rounding. Measured on the 100M PPO setting
  (``bench/ppo_vs_trl.py --setting 100m``, CPU): peak RSS 1,788-1,809 -> 1,672-1,677 MiB, episodes/s unchanged
  or up (the update's share of a step 0.52-0.53 -> 0.50); the smaller, fewer tensors leave fewer holes in the
  C allocator's heap, which was most of the difference (the hidden-size activations alone, returned to the
  system on each free by ``MALLOC_MMAP_THRESHOLD_``, gave the same peak at 0.65-0.75x the speed).

Per token, in multiply-adds, for a layer of ``n`` inputs, ``m`` outputs and rank ``r`` (forward and backward):
PEFT's form costs ``2 n m + 3 r (n + m)``, the folded form ``3 n m`` plus ``3 r n m`` per call. The folded form is
therefore cheaper when the adapter is wide for its layer (``r`` near ``n m / (n + m)``), and it runs 2 operations
where PEFT's runs 9, which is what small layers are bound by. Measured on CPU (AMD EPYC, 2 cores, float32,
forward and backward of one layer with r=16, at 300 and 1,232 tokens): every layer whose folded-to-PEFT ratio of
multiply-adds (:func:`cost_ratio`) was at most 1.15 ran faster folded (0.60-0.82x the time: 64x64, 64x172,
128x128), every layer at 1.28 or more ran slower (1.09-1.46x: 256x256 to 768x2560). Hence :data:`MAX_COST_RATIO`;
on a 99.5M-parameter Llama (hidden 768) no layer qualifies (every one takes the products form), on stories260K
(hidden 64) every one does.

Used by every training script (``--fuse_lora``, :class:`rlhfkit.modelargs.ModelArguments`): the PPO update and
the rollout's forward passes in ``ppo.py``, the whole of ``trainer.train`` in the Trainer scripts
(:func:`rlhfkit.training.fuse_lora_in_training`). Only plain LoRA on an ``nn.Linear`` qualifies: one active
adapter, no DoRA or other variant, no LoRA bias, and not merged or disabled at the time of the call (then PEFT's
own forward runs). A layer whose LoRA dropout is at work (training mode, ``p > 0``) is never folded (the base
product must see the undropped input); the products form applies the dropout to the adapter's input itself, the
mask drawn as torch's CPU dropout draws it (the same masks as PEFT's forward from the same seed), except under
autocast, where PEFT drops the float32 input before autocast casts it (PEFT's forward runs there). Folding needs the adapter in the weight's dtype; the products form also takes
PEFT's float32 adapters over a bfloat16 or float16 model (where PEFT keeps a float32 copy of every LoRA layer's
input for the backward pass, and the products form does not) and autocast (its operands cast as autocast casts
them for PEFT's three products), and needs a frozen base weight (else PEFT's own forward runs).
"""

from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn.functional as F
from torch import nn

MAX_COST_RATIO = 1.2  # fold a layer when its folded form costs at most this many times PEFT's multiply-adds


def cost_ratio(n: int, m: int, r: int, tokens: int) -> float:
    """Multiply-adds of the folded form over PEFT's, forward and backward, for ``tokens`` tokens through a layer of
    ``n`` inputs, ``m`` outputs and rank ``r``."""
    tokens = max(tokens, 1)
    folded = 3 * n * m * tokens + 3 * r * n * m
    peft = (2 * n * m + 3 * r * (n + m)) * tokens
    return folded / peft


def resolve_mode(mode: str, sharded: bool) -> tuple[str, str | None]:
    """(the mode a run uses for ``--fuse_lora mode``, why it changed or None). Folding and the products form need
    whole weights: with sharded parameters (FSDP, DeepSpeed) "auto" becomes "off" and "on" is an error."""
    from rlhfkit.errors import UserError

    if not sharded or mode == "off":
        return mode, None
    if mode == "on":
        raise UserError("--fuse_lora on needs whole weights; this run shards them (FSDP / DeepSpeed): use "
                        "--fuse_lora auto or off")
    return "off", "--fuse_lora auto: off (the parameters are sharded)"


def _lora_linear_class():
    from peft.tuners.lora.layer import Linear

    return Linear


def plain(layer: nn.Module, inference: bool = False, with_dropout: bool = False) -> bool:
    """Whether ``layer`` is a plain LoRA linear layer :func:`fused` can compute as :class:`LoRAProducts`: one active
    adapter, no variant (DoRA, ...), no LoRA bias, no dropout at work. ``inference``: for a caller that computes
    without dropout (eval mode, no gradients), where the adapter's input dropout does nothing and so does not stand
    in the way; ``with_dropout``: for a caller that applies PEFT's ``nn.Dropout`` itself (:class:`LoRAProducts`).
    The adapter may be in another dtype than the weight (PEFT keeps adapters in float32 over a bfloat16 model)."""
    try:
        lora_linear = _lora_linear_class()
    except ImportError:
        return False
    if type(layer) is not lora_linear or not isinstance(layer.base_layer, nn.Linear):
        return False
    if getattr(layer, "fan_in_fan_out", False) or len(layer.active_adapters) != 1:
        return False
    name = layer.active_adapters[0]
    if name not in layer.lora_A or name in getattr(layer, "lora_variant", {}):
        return False
    if getattr(layer, "lora_bias", {}).get(name, False):
        return False
    dropout = layer.lora_dropout[name]
    if isinstance(dropout, nn.Dropout) and dropout.p > 0 and not inference and not (
            with_dropout and type(dropout) is nn.Dropout):
        return False
    weight = layer.base_layer.weight
    return type(weight) in (torch.Tensor, nn.Parameter) and weight.dim() == 2 and weight.numel() > 0


def foldable(layer: nn.Module, inference: bool = False) -> bool:
    """Whether ``layer`` is a plain LoRA linear layer (:func:`plain`) whose adapter can be folded into its weight:
    the adapter in the weight's dtype."""
    if not plain(layer, inference):
        return False
    return layer.lora_A[layer.active_adapters[0]].weight.dtype == layer.base_layer.weight.dtype


def _count(counts: dict, way: str) -> None:
    if not torch.compiler.is_compiling():  # a compiled graph would guard on the count and recompile at every call
        counts[way] += 1


def _forward(layer, original, mode: str, counts: dict, x, *args, **kwargs):
    if args or kwargs or layer.disable_adapters or layer.merged:
        return original(x, *args, **kwargs)
    name = layer.active_adapters[0]
    base = layer.base_layer
    n, m = base.in_features, base.out_features
    lora_a, lora_b = layer.lora_A[name].weight, layer.lora_B[name].weight
    dropout = layer.lora_dropout[name]
    dropout = dropout.p if isinstance(dropout, nn.Dropout) and dropout.training else 0.0  # at work: on x A^T's input
    if not dropout and lora_a.dtype == base.weight.dtype and (
            mode == "on" or cost_ratio(n, m, layer.r[name], x.numel() // n) <= MAX_COST_RATIO):
        _count(counts, "folded")
        # (m, n) = (m, n) + s * (m, r) @ (r, n): the adapter folded in; autograd takes A's and B's gradients through it
        weight = torch.addmm(base.weight, lora_b, lora_a, alpha=layer.scaling[name])
        return F.linear(x, weight, base.bias)
    device_type = x.device.type
    autocast = torch.is_autocast_enabled(device_type)
    # PEFT's dropout runs on the float32 input before autocast casts it: left to PEFT's forward under autocast
    if base.weight.requires_grad or (dropout and autocast):
        _count(counts, "peft")
        return original(x)
    _count(counts, "products")
    if autocast:
        # what autocast does to PEFT's three linear layers: every operand cast to its dtype (float32 adapters
        # too); the casts are recorded by autograd (the adapters' gradients come back in float32), the function
        # itself runs with autocast off
        dtype = torch.get_autocast_dtype(device_type)

        def cast(t):
            return t if t is None or t.dtype == dtype else t.to(dtype)

        with torch.autocast(device_type, enabled=False):
            return LoRAProducts.apply(cast(x), cast(base.weight), cast(base.bias), cast(lora_a), cast(lora_b),
                                      layer.scaling[name])
    return LoRAProducts.apply(x, base.weight, base.bias, lora_a, lora_b, layer.scaling[name], dropout)


class LoRAProducts(torch.autograd.Function):
    """``y = x W^T + b + s (x A^T) B^T`` (PEFT's LoRA linear layer) with one output allocated and only ``x`` kept
    for the backward pass. ``W`` is frozen; ``b`` (the base layer's bias, trainable with ``LoraConfig(bias="all")``),
    ``A`` and ``B`` get gradients where they need them. Adapters in float32 over a half-precision model (PEFT's
    default there): the adapter's products in float32 as PEFT computes them, the sum rounded once to the model's
    dtype; PEFT keeps a float32 copy of every LoRA layer's input for the backward pass, this keeps the input as it
    came and casts it again there."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scale: float, dropout: float = 0.0):
        inputs = x.reshape(-1, x.shape[-1])  # (T, n): every leading dimension flattened
        adapter_in = inputs.to(lora_a.dtype)  # (T, n), the adapter's dtype (no copy when they agree)
        noise = None
        if dropout:  # PEFT's nn.Dropout on the adapter's input, drawn as torch's CPU dropout draws it
            noise = torch.empty_like(adapter_in).bernoulli_(1 - dropout).div_(1 - dropout)  # (T, n): 0 or 1/(1-p)
            adapter_in = adapter_in * noise
        down = adapter_in @ lora_a.t()  # (T, r), in the adapter's dtype
        out = F.linear(inputs, weight, bias)  # (T, m)
        if down.dtype == out.dtype:
            out.addmm_(down, lora_b.t(), alpha=scale)  # + s (x A^T) B^T, in place: no (T, m) temporaries
        else:  # float32 adapter: its (T, m) product in float32, added and rounded once
            out.add_(down @ lora_b.t(), alpha=scale)
        # only what the gradients asked for need (a layer whose input needs none, e.g. the first layer's q, k, v
        # over frozen embeddings, keeps no weight: it matters where they are autocast's copies)
        need_x, need_a, need_b = (ctx.needs_input_grad[i] for i in (0, 3, 4))
        kept = adapter_in if dropout else inputs  # the dropped input, or the input as it came (cast again there)
        ctx.save_for_backward(kept if need_a or need_b else None, weight if need_x else None,
                              lora_a if need_x or need_b else None, lora_b if need_x or need_a else None,
                              noise if need_x else None)
        ctx.scale, ctx.adapter_dtype = scale, lora_a.dtype
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad_out):
        inputs, weight, lora_a, lora_b, noise = ctx.saved_tensors
        scale, adapter_dtype = ctx.scale, ctx.adapter_dtype
        grad = grad_out.reshape(-1, grad_out.shape[-1])  # (T, m), the model's dtype
        adapter_grad = grad.to(adapter_dtype)  # (T, m) in the adapter's dtype (no copy when they agree)
        # (T, r): the gradient reaching x A^T, before the scale (for x's and A's gradients)
        grad_down = adapter_grad @ lora_b if lora_b is not None else None
        grad_x = grad_bias = grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = grad @ weight  # (T, n)
            if noise is not None:  # through the dropout: the kept entries' gradient scaled by 1/(1-p)
                grad_x.add_((grad_down @ lora_a).mul_(noise), alpha=scale)
            elif grad_down.dtype == grad_x.dtype:
                grad_x.addmm_(grad_down, lora_a, alpha=scale)
            else:
                grad_x.add_(grad_down @ lora_a, alpha=scale)
            grad_x = grad_x.view(*grad_out.shape[:-1], grad_x.shape[-1])
        if ctx.needs_input_grad[2]:
            grad_bias = grad.sum(0)
        if ctx.needs_input_grad[3] or ctx.needs_input_grad[4]:
            adapter_inputs = inputs.to(adapter_dtype)  # (T, n): PEFT's float32 copy, made again only here
            if ctx.needs_input_grad[3]:
                grad_a = (grad_down.t() @ adapter_inputs).mul_(scale)  # (r, n)
            if ctx.needs_input_grad[4]:
                grad_b = (adapter_grad.t() @ (adapter_inputs @ lora_a.t())).mul_(scale)  # (m, r); x A^T recomputed
        return grad_x, None, grad_bias, grad_a, grad_b, None, None


# While a fused() context is open, PEFT's LoRA linear class computes through _dispatch: one function for every
# layer, which reads the layer's own setting from STATE_ATTRIBUTE. (A forward set on each instance instead would be a
# different object per layer, and torch.compile guards on it: a compiled model recompiled its attention for every
# layer, up to the recompile limit, then ran eager.)
STATE_ATTRIBUTE = "_fused_lora"  # (mode, counts) on the layers of a model inside fused()
_peft_forward = None  # PEFT's own Linear.forward while the class is patched
_open_contexts = 0


def _dispatch(layer, x, *args, **kwargs):
    state = getattr(layer, STATE_ATTRIBUTE, None)
    if state is None or state[0] == "off":  # another model's layer, not plain LoRA, or inside fused(..., "off")
        return _peft_forward(layer, x, *args, **kwargs)
    mode, counts = state
    return _forward(layer, functools.partial(_peft_forward, layer), mode, counts, x, *args, **kwargs)


@contextlib.contextmanager
def fused(model: nn.Module, mode: str = "auto"):
    """While inside, every plain LoRA layer of ``model`` (:func:`plain`) computes folded when its adapter shares
    the weight's dtype and that costs at most :data:`MAX_COST_RATIO` times PEFT's form at the call's number of
    tokens, and with :class:`LoRAProducts` otherwise (``mode`` "auto"); folded wherever the dtypes agree, else
    with :class:`LoRAProducts` ("on"); or in PEFT's own forward ("off"). Yields a dict counting the calls computed
    each way ("folded", "products", "peft": PEFT's own forward, where the products form does not apply), calls
    inside a torch.compile'd graph not counted. Other models' layers compute as PEFT does; contexts may nest (the
    inner one's setting applies inside it)."""
    global _peft_forward, _open_contexts
    counts = {"folded": 0, "products": 0, "peft": 0}
    layers = [layer for layer in model.modules() if plain(layer, with_dropout=True)]
    if not layers or (mode == "off" and not _open_contexts):  # nothing to change
        yield counts
        return
    lora_linear = _lora_linear_class()
    before = [layer.__dict__.get(STATE_ATTRIBUTE) for layer in layers]
    for layer in layers:
        setattr(layer, STATE_ATTRIBUTE, (mode, counts))
    if _open_contexts == 0:
        _peft_forward = lora_linear.forward
        lora_linear.forward = _dispatch
    _open_contexts += 1
    try:
        yield counts
    finally:
        _open_contexts -= 1
        if _open_contexts == 0:
            lora_linear.forward = _peft_forward
        for layer, state in zip(layers, before, strict=True):
            if state is None:
                delattr(layer, STATE_ATTRIBUTE)
            else:
                setattr(layer, STATE_ATTRIBUTE, state)
