"""``ppo_curves.png``: the curves a person looks at after a PPO run (scores, KL, losses, throughput)."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

PANELS = (
    ("objective/scores", "score"),
    ("objective/kl", "KL to the reference (per sequence)"),
    ("objective/rlhf_reward", "score - KL penalty"),
    ("policy/approxkl", "approx KL (update vs rollout)"),
    ("loss/value", "value loss"),
    ("eps", "episodes/s"),
)


def plot_curves(history: list[dict], path: str) -> str | None:
    """Plot each metric of :data:`PANELS` against the episode count; None (and a log line) without matplotlib."""
    if not history:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.info("matplotlib is not installed: no %s", path)
        return None
    from rlhfkit.io import write_bytes

    episodes = [h["episode"] for h in history]
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
    for ax, (key, title) in zip(axes.flat, PANELS, strict=True):
        ax.plot(episodes, [h.get(key, float("nan")) for h in history], lw=1.2)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("episodes", fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    write_bytes(path, buffer.getvalue())
    return path
