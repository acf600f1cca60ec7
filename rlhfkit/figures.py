"""What every figure the toolkit writes shares: a headless matplotlib (optional), a training-curve panel and
PNG bytes (written atomically by the caller)."""

from __future__ import annotations

import io
import logging

logger = logging.getLogger(__name__)


def pyplot(what: str):
    """``matplotlib.pyplot`` on the headless Agg backend, or None (and a log line naming ``what`` is skipped)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.info("matplotlib is not installed: no %s", what)
        return None
    return plt


def curve(ax, history: list[dict], key: str, title: str) -> None:
    """One training metric against the episode count (a missing value is a gap)."""
    ax.plot([h["episode"] for h in history], [h.get(key, float("nan")) for h in history], lw=1.2)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("episodes", fontsize=8)
    ax.grid(alpha=0.3)


def png_bytes(fig) -> bytes:
    """The figure as PNG (90 dpi), closed afterwards."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()
