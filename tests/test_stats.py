"""rlhfkit.stats against hand-computed numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rlhfkit import stats


def test_describe_ignores_missing_values_and_uses_the_sample_std():
    summary = stats.describe([[1.0, 2.0], [3.0, float("nan")]])
    assert summary == {"mean": 2.0, "median": 2.0, "std": 1.0, "n": 3}
    assert stats.describe([5.0]) == {"mean": 5.0, "median": 5.0, "std": 0.0, "n": 1}
    assert stats.describe([float("nan")]) is None


def test_per_prompt_averages_the_samples_of_a_prompt():
    assert stats.per_prompt([[1, 3], [0, 0]]).tolist() == [2.0, 0.0]
    assert stats.per_prompt([1, 2]).tolist() == [1.0, 2.0]


def test_win_rate_counts_wins_ties_and_losses_per_prompt():
    ours = [[1.0, 1.0], [0.0, 0.0], [0.5, 0.5], [2.0, 0.0]]
    theirs = [[0.0, 0.0], [1.0, 1.0], [0.5, 0.5 + 1e-9], [0.0, 1.0]]  # the last: means 1.0 vs 0.5, a win
    result = stats.paired_win_rate(ours, theirs)
    assert (result["wins"], result["ties"], result["losses"], result["prompts"]) == (2, 1, 1, 4)
    assert result["win_rate"] == pytest.approx((2 + 0.5) / 4)
    assert result["mean_difference"] == pytest.approx((1 - 1 + 0 + 0.5) / 4, abs=1e-9)
    assert result["ci_low"] <= result["win_rate"] <= result["ci_high"]


def test_identical_scores_are_all_ties():
    scores = np.random.default_rng(0).normal(size=(50, 2))
    result = stats.paired_win_rate(scores, scores.copy())
    assert result["ties"] == 50 and result["win_rate"] == 0.5
    assert result["ci_low"] == result["ci_high"] == 0.5
    assert result["mean_difference"] == 0.0


def test_interval_covers_the_truth_about_95_percent_of_the_time():
    # ours wins with probability 0.7: P(a + d > b) = Phi(d / sqrt(2)) for a, b ~ N(0, 1), and Phi(0.5244) = 0.7
    shift, truth = 0.5244 * math.sqrt(2), 0.7
    rng = np.random.default_rng(1)
    covered = 0
    for trial in range(300):
        a, b = rng.normal(size=100) + shift, rng.normal(size=100)
        result = stats.paired_win_rate(a, b, level=0.95, resamples=1000, seed=trial)
        covered += result["ci_low"] <= truth <= result["ci_high"]
    assert 0.90 <= covered / 300 <= 0.99


def test_interval_shrinks_like_one_over_root_n():
    rng = np.random.default_rng(2)
    widths = {}
    for n in (100, 1600):
        a, b = rng.normal(size=n) + 0.5244 * math.sqrt(2), rng.normal(size=n)
        result = stats.paired_win_rate(a, b, level=0.95, seed=3)
        widths[n] = result["ci_high"] - result["ci_low"]
    assert widths[1600] < widths[100] / 3  # ~ 1/sqrt(16) = 1/4
    normal_width = 2 * 1.96 * math.sqrt(0.7 * 0.3 / 1600)  # the bootstrap agrees with the normal approximation
    assert widths[1600] == pytest.approx(normal_width, rel=0.2)


def test_a_wider_level_gives_a_wider_interval():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=200), rng.normal(size=200)
    narrow, wide = stats.paired_win_rate(a, b, level=0.8), stats.paired_win_rate(a, b, level=0.99)
    assert wide["ci_low"] < narrow["ci_low"] and wide["ci_high"] > narrow["ci_high"]


def test_unpaired_shapes_are_refused():
    with pytest.raises(ValueError, match="same non-empty shape"):
        stats.paired_win_rate([1.0, 2.0], [1.0])
