"""LoRA layers computed as one matrix product with the adapter folded into the weight, where that is cheaper.

PEFT computes a LoRA linear layer as ``x W^T + s (x A^T) B^T``: the base product, two thin products, a scale and
an add, and in the backward pass five more products. :func:`fused` computes it as ``x (W + s B A)^T`` instead:
the folded weight is built for each call (``r n m`` multiply-adds, independent of the number of tokens), the
backward pass takes the folded weight's gradient (``n m`` per token) and from it, once per call, the gradients of
``A`` and ``B``; ``W`` stays frozen and the result is the same up to float rounding.

Per token, in multiply-adds, for a layer of ``n`` inputs, ``m`` outputs and rank ``r`` (forward and backward):
PEFT's form costs ``2 n m + 3 r (n + m)``, the folded form ``3 n m`` plus ``3 r n m`` per call. The folded form is
therefore cheaper when the adapter is wide for its layer (``r`` near ``n m / (n + m)``), and it runs 2 operations
where PEFT's runs 9, which is what small layers are bound by. Measured on CPU (AMD EPYC, 2 cores, float32,
forward and backward of one layer with r=16, at 300 and 1,232 tokens): every layer whose folded-to-PEFT ratio of
multiply-adds (:func:`cost_ratio`) was at most 1.15 ran faster folded (0.60-0.82x the time: 64x64, 64x172,
128x128), every layer at 1.28 or more ran slower (1.09-1.46x: 256x256 to 768x2560). Hence :data:`MAX_COST_RATIO`;
on a 99.5M-parameter Llama (hidden 768) no layer qualifies, on stories260K (hidden 64) every one does.

Used for the PPO update (``ppo.py --fuse_lora``). Only plain LoRA on an ``nn.Linear`` qualifies: one active
adapter, no dropout at work, no DoRA or other variant, no LoRA bias, the adapter in the weight's dtype, and not
merged or disabled at the time of the call (then PEFT's own forward runs).
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


def _lora_linear_class():
    from peft.tuners.lora.layer import Linear

    return Linear


def foldable(layer: nn.Module, inference: bool = False) -> bool:
    """Whether ``layer`` is a plain LoRA linear layer :func:`fused` can compute folded (whatever the cost).
    ``inference``: for a caller that computes without dropout (eval mode, no gradients), where the adapter's input
    dropout does nothing and so does not stand in the way."""
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
    if isinstance(dropout, nn.Dropout) and dropout.p > 0 and not inference:
        return False
    weight = layer.base_layer.weight
    return (type(weight) in (torch.Tensor, nn.Parameter) and weight.dim() == 2 and weight.numel() > 0
            and layer.lora_A[name].weight.dtype == weight.dtype)


def _forward(layer, original, always: bool, counts: dict, x, *args, **kwargs):
    if args or kwargs or layer.disable_adapters or layer.merged:
        return original(x, *args, **kwargs)
    name = layer.active_adapters[0]
    base = layer.base_layer
    n, m = base.in_features, base.out_features
    if not always and cost_ratio(n, m, layer.r[name], x.numel() // n) > MAX_COST_RATIO:
        counts["peft"] += 1
        return original(x)
    counts["folded"] += 1
    # (m, n) = (m, n) + s * (m, r) @ (r, n): the adapter folded in; autograd takes A's and B's gradients through it
    weight = torch.addmm(base.weight, layer.lora_B[name].weight, layer.lora_A[name].weight,
                         alpha=layer.scaling[name])
    return F.linear(x, weight, base.bias)


@contextlib.contextmanager
def fused(model: nn.Module, mode: str = "auto"):
    """While inside, every foldable LoRA layer of ``model`` computes folded when that costs at most
    :data:`MAX_COST_RATIO` times PEFT's form at the call's number of tokens (``mode`` "auto"), always ("on"), or
    never ("off"). Yields a dict counting the calls computed each way ("folded", "peft")."""
    counts = {"folded": 0, "peft": 0}
    layers = [] if mode == "off" else [layer for layer in model.modules() if foldable(layer)]
    own = [layer.__dict__.get("forward") for layer in layers]  # a forward set on the instance by someone else
    for layer in layers:
        layer.forward = functools.partial(_forward, layer, layer.forward, mode == "on", counts)
    try:
        yield counts
    finally:
        for layer, forward in zip(layers, own, strict=True):
            if forward is None:
                del layer.forward  # the class's forward again
            else:
                layer.forward = forward
