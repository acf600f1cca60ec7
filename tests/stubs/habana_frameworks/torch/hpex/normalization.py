"""Stand-in for ``habana_frameworks.torch.hpex.normalization``: ``FusedClipNorm`` is torch's
``clip_grad_norm_``, recorded."""

import torch

from habana_frameworks._standin import record


class FusedClipNorm:
    def __init__(self, parameters, max_norm):
        self.max_norm = max_norm
        record("fused_clip_norm", max_norm=max_norm)

    def clip_norm(self, parameters):
        record("fused_clip_norm_call")
        return torch.nn.utils.clip_grad_norm_(parameters, self.max_norm)
