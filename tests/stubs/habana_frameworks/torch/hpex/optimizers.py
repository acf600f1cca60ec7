"""Stand-in for ``habana_frameworks.torch.hpex.optimizers``: ``FusedAdamW`` is torch's AdamW, recorded."""

import torch

from habana_frameworks._standin import record


class FusedAdamW(torch.optim.AdamW):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, **kwargs):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        record("fused_adamw", lr=lr, eps=eps, betas=list(betas), weight_decay=weight_decay)

    def step(self, closure=None):
        record("fused_adamw_step")
        return super().step(closure)
