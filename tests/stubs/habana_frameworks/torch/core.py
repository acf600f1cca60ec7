"""Stand-in for ``habana_frameworks.torch.core``: records ``mark_step`` calls and the lazy-mode variable.

The real runtime reads ``PT_HPU_LAZY_MODE`` once, when this module is imported, so the value seen at import
time is what tests must check.
"""

import os

#: ``os.environ.get("PT_HPU_LAZY_MODE")`` at the moment this module was imported.
LAZY_MODE_AT_IMPORT = os.environ.get("PT_HPU_LAZY_MODE")

#: One entry per :func:`mark_step` call.
MARK_STEP_CALLS: list[int] = []


def mark_step() -> None:
    """Record the call (the real one flushes the pending lazy-mode graph)."""
    MARK_STEP_CALLS.append(len(MARK_STEP_CALLS) + 1)
