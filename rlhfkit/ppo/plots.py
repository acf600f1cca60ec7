"""``ppo_curves.png``: the curves a person looks at after a PPO run (scores, KL, losses, throughput)."""

from __future__ import annotations

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
    from rlhfkit import figures
    from rlhfkit.io import write_bytes

    plt = figures.pyplot(path) if history else None
    if plt is None:
        return None
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
    for ax, (key, title) in zip(axes.flat, PANELS, strict=True):
        figures.curve(ax, history, key, title)
    write_bytes(path, figures.png_bytes(fig))
    return path
