"""Summary statistics for evaluations: per-model score summaries and paired comparisons with intervals.

Pure numpy, no model code, so each function can be checked with numbers.
"""

from __future__ import annotations

import numpy as np

#: Two scores closer than this are a tie (the gold judge gives exact multiples of 1/3; float noise must not
#: turn a tie into a win).
TIE_TOLERANCE = 1e-6


def describe(values) -> dict | None:
    """mean / median / std (sample, ddof 1) / n of the finite values; None when there are none."""
    array = np.asarray(values, dtype=np.float64).ravel()
    array = array[np.isfinite(array)]
    if array.size == 0:
        return None
    return {
        "mean": float(array.mean()),
        "median": float(np.median(array)),
        "std": float(array.std(ddof=1)) if array.size > 1 else 0.0,
        "n": int(array.size),
    }


def per_prompt(values) -> np.ndarray:
    """(P,) per-prompt means of (P,) or (P, K) scores (K samples of the same prompt are averaged)."""
    array = np.asarray(values, dtype=np.float64)
    return array if array.ndim == 1 else array.mean(axis=1)


def bootstrap_interval(values: np.ndarray, level: float, resamples: int, seed: int) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (resampling the items with replacement)."""
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(values), size=(resamples, len(values)))
    means = values[index].mean(axis=1)
    alpha = (1.0 - level) / 2
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def paired_win_rate(ours, theirs, level: float = 0.95, resamples: int = 2000, seed: int = 0) -> dict:
    """How often ``ours`` beats ``theirs`` on the same prompts, with a bootstrap confidence interval.

    Inputs are scores of the same prompts in the same order, (P,) or (P, K); with K samples per prompt the
    per-prompt means are compared. A win counts 1, a tie 1/2, a loss 0, so 0.5 means no difference. The
    interval resamples prompts (the unit that was sampled), as do the mean paired difference and its interval.
    """
    a, b = per_prompt(ours), per_prompt(theirs)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"paired scores need the same non-empty shape, got {a.shape} and {b.shape}")
    difference = a - b
    ties = np.abs(difference) <= TIE_TOLERANCE
    outcome = np.where(ties, 0.5, (difference > 0).astype(np.float64))
    win_low, win_high = bootstrap_interval(outcome, level, resamples, seed)
    diff_low, diff_high = bootstrap_interval(difference, level, resamples, seed + 1)
    return {
        "win_rate": float(outcome.mean()),
        "ci_low": win_low,
        "ci_high": win_high,
        "wins": int(((difference > 0) & ~ties).sum()),
        "ties": int(ties.sum()),
        "losses": int(((difference < 0) & ~ties).sum()),
        "prompts": int(a.size),
        "mean_difference": float(difference.mean()),
        "difference_ci_low": diff_low,
        "difference_ci_high": diff_high,
        "level": level,
    }
