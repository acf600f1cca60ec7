"""The metrics of a preference evaluation: pure arithmetic on the chosen and rejected score lists (the scores
come from :mod:`rlhfkit.scoring`)."""

from __future__ import annotations

import math


def auroc(positives: list[float], negatives: list[float]) -> float:
    """Area under the ROC curve separating ``positives`` from ``negatives`` (ties count half)."""
    if not positives or not negatives:
        return float("nan")
    ranked = sorted([(s, 1) for s in positives] + [(s, 0) for s in negatives])
    rank_sum, i = 0.0, 0
    while i < len(ranked):  # average ranks over ties
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        average_rank = (i + 1 + j) / 2
        rank_sum += average_rank * sum(label for _, label in ranked[i:j])
        i = j
    n_pos, n_neg = len(positives), len(negatives)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def pair_metrics(chosen: list[float], rejected: list[float]) -> dict[str, float]:
    """Accuracy (chosen scored above rejected), AUROC (chosen vs rejected scores), mean margin, score stats."""
    if len(chosen) != len(rejected) or not chosen:
        raise ValueError("need the same, non-zero number of chosen and rejected scores")
    margins = [c - r for c, r in zip(chosen, rejected, strict=True)]
    everything = chosen + rejected
    mean = sum(everything) / len(everything)
    std = math.sqrt(sum((s - mean) ** 2 for s in everything) / len(everything))
    return {
        "accuracy": sum(m > 0 for m in margins) / len(margins),
        "auroc": auroc(chosen, rejected),
        "margin_mean": sum(margins) / len(margins),
        "score_mean": mean,
        "score_std": std,
        "chosen_score_mean": sum(chosen) / len(chosen),
        "rejected_score_mean": sum(rejected) / len(rejected),
        "pairs": float(len(margins)),
    }
