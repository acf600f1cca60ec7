"""Stand-in for ``habana_frameworks.torch.hpu``: device availability, HPU graphs (``wrap_in_hpu_graph`` for
inference, ``ModuleCacher`` for training), recorded; the wrapped modules run unchanged on the CPU."""

import sys

import torch

from habana_frameworks._standin import record, record_shapes

#: What :func:`is_available` answers; tests set it to False to play a machine with no visible card.
AVAILABLE = True


def is_available() -> bool:
    return AVAILABLE


def wrap_in_hpu_graph(module, asynchronous=False, disable_tensor_cache=False, dry_run=False, max_graphs=None):
    record("wrap_in_hpu_graph", module=type(module).__name__, disable_tensor_cache=disable_tensor_cache)
    return record_shapes(module, type(module).__name__)


class ModuleCacher:
    def __init__(self, max_graphs=10):
        self.max_graphs = max_graphs

    def __call__(self, model, inplace=True, allow_unused_input=False, **kwargs):
        record("module_cacher", module=type(model).__name__, inplace=inplace, allow_unused_input=allow_unused_input)
        return record_shapes(model, type(model).__name__)


def _compute_on_cpu() -> None:
    """torch has no "hpu" device on this machine: the toolkit's HPU runs compute on the CPU instead."""
    device = sys.modules.get("rlhfkit.device")
    if device is not None:
        device.DeviceInfo.torch_device = property(
            lambda self: torch.device("cpu" if self.type == "hpu" else self.type))


_compute_on_cpu()
