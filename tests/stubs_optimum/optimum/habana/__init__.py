"""Test-only stand-in for optimum-habana's ``optimum.habana`` (never shipped): ``GaudiConfig``.

The distribution metadata (``optimum_habana-<version>.dist-info``, with the ``Requires-Dist`` pins under test)
is written by each test beside this folder, so one stand-in plays both a release that fits the installed
stack and one that does not (1.21.2's real pins).
"""

try:  # recorded where the habana_frameworks stand-in is importable too
    from habana_frameworks._standin import record
except ImportError:  # pragma: no cover
    def record(event, **data):
        pass


class GaudiConfig:
    def __init__(self, use_fused_adam=False, use_fused_clip_norm=False, use_torch_autocast=False, **kwargs):
        self.use_fused_adam, self.use_fused_clip_norm = use_fused_adam, use_fused_clip_norm
        self.use_torch_autocast = use_torch_autocast
        record("gaudi_config", use_fused_adam=use_fused_adam, use_fused_clip_norm=use_fused_clip_norm,
               use_torch_autocast=use_torch_autocast)
