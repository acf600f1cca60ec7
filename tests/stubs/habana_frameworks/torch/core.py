"""Stand-in for ``habana_frameworks.torch.core``: records ``mark_step`` calls and the lazy-mode variable.

The real runtime reads ``PT_HPU_LAZY_MODE`` once, when this module is imported, so the value seen at import
time is what tests must check.
"""

import os
import sys

from habana_frameworks._standin import record

#: ``os.environ.get("PT_HPU_LAZY_MODE")`` at the moment this module was imported.
LAZY_MODE_AT_IMPORT = os.environ.get("PT_HPU_LAZY_MODE")
record("import", module="core", lazy_mode=LAZY_MODE_AT_IMPORT)

#: One entry per :func:`mark_step` call.
MARK_STEP_CALLS: list[int] = []


def mark_step() -> None:
    """Record the call and who asked for it (the real one flushes the pending lazy-mode graph).

    ``caller`` is the function that called the toolkit's ``rlhfkit.device.mark_step``: the flush points are
    named functions (``flush_after_backward``, ``flush_after_optimizer_step``)."""
    MARK_STEP_CALLS.append(len(MARK_STEP_CALLS) + 1)
    frame = sys._getframe(1)
    caller = frame.f_back.f_code.co_name if frame.f_back is not None else None
    record("mark_step", caller=caller)
