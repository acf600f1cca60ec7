"""rlhfkit/ppo/core.py: every PPO function against numbers worked out by hand in the test itself.

The tensors are small (2-3 rows, 3-5 tokens) so each expected value can be written out as plain arithmetic
(with math.log / math.exp where needed); nothing here calls the code under test to produce an expected value.
"""

from __future__ import annotations

import math

import pytest
import torch

from rlhfkit.ppo import core

F64 = torch.float64


def t(data, dtype=F64) -> torch.Tensor:
    return torch.tensor(data, dtype=dtype)


def assert_values(actual: torch.Tensor, expected, atol: float = 1e-6) -> None:
    """``actual`` equals the hand-computed ``expected`` (nested lists or a number) to ``atol``."""
    expected = torch.as_tensor(expected, dtype=F64)
    assert tuple(actual.shape) == tuple(expected.shape), f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    torch.testing.assert_close(actual.detach().double(), expected, rtol=0.0, atol=atol)


# ------------------------------------------------------------------------------------ masked statistics
VALUES = [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]
MASK = [[1, 1, 0, 0], [1, 1, 1, 0]]
# real entries: 1, 2, 5, 6, 7 -> sum 21, count 5, mean 4.2
# deviations -3.2, -2.2, 0.8, 1.8, 2.8 -> squares 10.24 + 4.84 + 0.64 + 3.24 + 7.84 = 26.8
MEAN = 21 / 5
SUM_SQ = 10.24 + 4.84 + 0.64 + 3.24 + 7.84


def test_masked_mean_global():
    assert_values(core.masked_mean(t(VALUES), t(MASK)), (1 + 2 + 5 + 6 + 7) / 5)
    # a float mask and a bool mask give the same
    assert_values(core.masked_mean(t(VALUES), t(MASK).bool()), 4.2)


def test_masked_mean_along_dim():
    # rows: (1 + 2) / 2 = 1.5 and (5 + 6 + 7) / 3 = 6
    assert_values(core.masked_mean(t(VALUES), t(MASK), dim=1), [1.5, 6.0])
    # columns: (1 + 5) / 2, (2 + 6) / 2, 7 / 1, and a column with no real entry gives 0 (no division by zero)
    assert_values(core.masked_mean(t(VALUES), t(MASK), dim=0), [3.0, 4.0, 7.0, 0.0])


def test_masked_mean_ignores_padding_values():
    changed = t([[1.0, 2.0, -100.0, 1e6], [5.0, 6.0, 7.0, 42.0]])
    assert_values(core.masked_mean(changed, t(MASK)), 4.2)
    assert_values(core.masked_mean(changed, t(MASK), dim=1), [1.5, 6.0])


def test_masked_var_unbiased_and_biased():
    assert SUM_SQ == pytest.approx(26.8)
    assert_values(core.masked_var(t(VALUES), t(MASK)), 26.8 / 4)  # Bessel: divide by 5 - 1
    assert_values(core.masked_var(t(VALUES), t(MASK), unbiased=True), 6.7)
    assert_values(core.masked_var(t(VALUES), t(MASK), unbiased=False), 26.8 / 5)
    assert_values(core.masked_var(t(VALUES), t(MASK), unbiased=False), 5.36)


def test_masked_var_ignores_padding_values():
    changed = t([[1.0, 2.0, 300.0, -7.0], [5.0, 6.0, 7.0, 1e3]])
    assert_values(core.masked_var(changed, t(MASK)), 6.7)
    assert_values(core.masked_var(changed, t(MASK), unbiased=False), 5.36)


def test_masked_whiten_shift_mean():
    std = math.sqrt(6.7 + 1e-8)  # unbiased variance of the real entries, as in TRL
    expected = [[(1 - 4.2) / std, (2 - 4.2) / std, 0.0, 0.0], [(5 - 4.2) / std, (6 - 4.2) / std, (7 - 4.2) / std, 0.0]]
    whitened = core.masked_whiten(t(VALUES), t(MASK))
    assert_values(whitened, expected)
    assert_values(whitened[0], [-3.2 / std, -2.2 / std, 0.0, 0.0])


def test_masked_whiten_without_shift_keeps_the_mean():
    # TRL's semantics: (x - mean) / std + mean, i.e. unit variance around the original mean, padding 0
    std = math.sqrt(6.7 + 1e-8)
    expected = [
        [(1 - 4.2) / std + 4.2, (2 - 4.2) / std + 4.2, 0.0, 0.0],
        [(5 - 4.2) / std + 4.2, (6 - 4.2) / std + 4.2, (7 - 4.2) / std + 4.2, 0.0],
    ]
    assert_values(core.masked_whiten(t(VALUES), t(MASK), shift_mean=False), expected)


@pytest.mark.parametrize("shift_mean", [True, False])
def test_masked_whiten_padding_is_zero_and_has_no_influence(shift_mean):
    values = t(VALUES)
    changed = t([[1.0, 2.0, -55.0, 1e4], [5.0, 6.0, 7.0, 3.5]])
    first = core.masked_whiten(values, t(MASK), shift_mean=shift_mean)
    second = core.masked_whiten(changed, t(MASK), shift_mean=shift_mean)
    assert torch.equal(first, second)
    assert first[0, 2] == 0 and first[0, 3] == 0 and first[1, 3] == 0


# ------------------------------------------------------------------------------------------------ entropy
def test_entropy_uniform_is_log_v():
    logits = torch.zeros(2, 3, 5)
    logits[1] = 7.5  # any constant row is uniform
    assert_values(core.entropy_from_logits(logits), [[math.log(5)] * 3] * 2)
    assert_values(core.entropy_from_logits(logits, temperature=0.3), [[math.log(5)] * 3] * 2)


def test_entropy_peaked_by_hand():
    # p = [1/2, 1/4, 1/4]: H = 0.5 ln 2 + 2 * 0.25 ln 4 = 1.5 ln 2
    # p = [1/4, 3/4] written as logits [0, ln 3]: H = -(0.25 ln 0.25 + 0.75 ln 0.75)
    # (the third logit of the second position, -1e4, has probability e^-1e4 = 0 in float64)
    logits = t([[[math.log(0.5), math.log(0.25), math.log(0.25)], [0.0, math.log(3.0), -1e4]]])
    expected = [[1.5 * math.log(2), -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))]]
    assert_values(core.entropy_from_logits(logits), expected)


def test_entropy_uses_temperature():
    # logits 2 ln p at temperature 2 are the distribution p = [1/2, 1/4, 1/4] again: 1.5 ln 2
    logits = t([[[2 * math.log(0.5), 2 * math.log(0.25), 2 * math.log(0.25)]]])
    assert_values(core.entropy_from_logits(logits, temperature=2.0), [[1.5 * math.log(2)]])
    # at temperature 1 it is p proportional to [1/4, 1/16, 1/16] = [2/3, 1/6, 1/6]
    h = -(2 / 3 * math.log(2 / 3) + 2 * (1 / 6) * math.log(1 / 6))
    assert_values(core.entropy_from_logits(logits), [[h]])


# ----------------------------------------------------------------------------------------- KL estimators
def test_kl_k1_and_k3_by_hand():
    logprobs = t([[-1.0, -2.0, -0.5]])
    ref = t([[-1.5, -1.0, -0.5]])
    # log ratio (policy - ref) = [0.5, -1.0, 0.0]
    assert_values(core.kl_estimate(logprobs, ref, "k1"), [[0.5, -1.0, 0.0]])
    assert_values(core.kl_estimate(logprobs, ref), [[0.5, -1.0, 0.0]])  # k1 is the default
    # k3 = (r - 1) - log r, r = p_ref / p = exp(-log ratio):
    #   r = e^-0.5: e^-0.5 - 1 + 0.5;  r = e: e - 1 - 1;  r = 1: 0
    assert_values(core.kl_estimate(logprobs, ref, "k3"), [[math.exp(-0.5) - 0.5, math.e - 2.0, 0.0]])


def test_kl_k3_is_never_negative():
    gen = torch.Generator().manual_seed(0)
    logprobs = torch.randn(64, 50, generator=gen, dtype=F64) * 3
    ref = torch.randn(64, 50, generator=gen, dtype=F64) * 3
    assert (core.kl_estimate(logprobs, ref, "k1") < 0).any()  # k1 does go negative on single samples
    assert (core.kl_estimate(logprobs, ref, "k3") >= 0).all()


def test_kl_estimators_match_true_kl_monte_carlo():
    p = [0.5, 0.3, 0.2]
    p_ref = [0.2, 0.3, 0.5]
    # KL(p || p_ref) = 0.5 ln(0.5/0.2) + 0.3 ln 1 + 0.2 ln(0.2/0.5) = 0.3 ln 2.5 = 0.27489
    true_kl = 0.5 * math.log(2.5) + 0.2 * math.log(0.4)
    assert true_kl == pytest.approx(0.3 * math.log(2.5))
    gen = torch.Generator().manual_seed(1234)
    samples = torch.multinomial(t(p), 200_000, replacement=True, generator=gen)
    logprobs = t([math.log(x) for x in p])[samples].unsqueeze(0)
    ref = t([math.log(x) for x in p_ref])[samples].unsqueeze(0)
    # std of the k1 sample mean is about sqrt(0.51 / 2e5) = 0.0016; of k3 smaller: 0.01 is over 6 sigma
    assert core.kl_estimate(logprobs, ref, "k1").mean().item() == pytest.approx(true_kl, abs=0.01)
    assert core.kl_estimate(logprobs, ref, "k3").mean().item() == pytest.approx(true_kl, abs=0.01)


def test_kl_unknown_estimator_raises():
    with pytest.raises(ValueError, match="unknown KL estimator"):
        core.kl_estimate(t([[0.0]]), t([[0.0]]), "k2")


# ---------------------------------------------------------------------------------------------- indices
def test_last_token_index_right_padding():
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]])
    assert core.last_token_index(mask).tolist() == [2, 4, 0, 0]  # an empty row gives 0, as documented
    assert core.last_token_index(mask.bool()).tolist() == [2, 4, 0, 0]


def test_last_token_index_left_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    assert core.last_token_index(mask).tolist() == [4, 4, 4]


def test_last_token_index_pad_equals_eos_uses_mask():
    eos = pad = 2
    # left-padded prompt (10, 11) + response (12, EOS) + right padding, all pads being the EOS id
    input_ids = torch.tensor([[pad, pad, 10, 11, 12, eos, pad, pad], [10, 11, 12, 13, eos, pad, pad, pad]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0, 0, 0]])
    index = core.last_token_index(mask)
    assert index.tolist() == [5, 4]  # the EOS itself, the last real token
    assert input_ids[torch.arange(2), index].tolist() == [eos, eos]
    # (finding the first pad id instead would give 0 for row 0, and 5, one past the end, for row 1)


# ------------------------------------------------------------------------------------ reward shaping
LOGPROBS = [[-1.0, -0.5, -2.0, -0.3], [-0.2, -0.4, -0.6, -0.8]]
REF_LOGPROBS = [[-1.5, -0.5, -1.0, -9.0], [-0.7, -0.4, -0.1, -5.0]]
REWARD_MASK = [[1, 1, 1, 0], [1, 1, 1, 1]]
SCORES = [2.0, -1.0]


def test_shape_rewards_k1():
    rewards, kl = core.shape_rewards(t(SCORES), t(LOGPROBS), t(REF_LOGPROBS), t(REWARD_MASK), kl_coef=0.1)
    # log ratios: row 0 [0.5, 0, -1.0, (pad)], row 1 [0.5, 0, -0.5, 4.2]
    assert_values(kl, [[0.5, 0.0, -1.0, 0.0], [0.5, 0.0, -0.5, 4.2]])
    # -0.1 * kl, plus the score at the last real token (index 2 in row 0, index 3 in row 1)
    assert_values(rewards, [[-0.05, 0.0, 0.1 + 2.0, 0.0], [-0.05, 0.0, 0.05, -0.42 - 1.0]])


def test_shape_rewards_k3():
    rewards, kl = core.shape_rewards(
        t(SCORES), t(LOGPROBS), t(REF_LOGPROBS), t(REWARD_MASK), kl_coef=0.1, estimator="k3"
    )
    # k3 = e^-lr - 1 + lr for lr = 0.5, 0, -1 | 0.5, 0, -0.5, 4.2
    k3 = [
        [math.exp(-0.5) - 0.5, 0.0, math.e - 2.0, 0.0],
        [math.exp(-0.5) - 0.5, 0.0, math.exp(0.5) - 1.5, math.exp(-4.2) + 3.2],
    ]
    assert_values(kl, k3)
    expected = [
        [-0.1 * k3[0][0], 0.0, -0.1 * k3[0][2] + 2.0, 0.0],
        [-0.1 * k3[1][0], 0.0, -0.1 * k3[1][2], -0.1 * k3[1][3] - 1.0],
    ]
    assert_values(rewards, expected)


def test_shape_rewards_padding_is_zero():
    # a huge log ratio on padding (row 0, last token: -0.3 vs -9.0) must not leak into kl or rewards
    for estimator in ("k1", "k3"):
        rewards, kl = core.shape_rewards(
            t(SCORES), t(LOGPROBS), t(REF_LOGPROBS), t(REWARD_MASK), kl_coef=0.1, estimator=estimator
        )
        assert rewards[0, 3].item() == 0.0 and kl[0, 3].item() == 0.0


# ------------------------------------------------------------------------------------------------- GAE
GAE_REWARDS = [[0.1, -0.2, 1.0], [0.4, 0.5, 7.0]]  # row 1's last token is padding
GAE_VALUES = [[0.5, 0.3, 0.6], [0.2, -0.1, 9.0]]
GAE_MASK = [[1, 1, 1], [1, 1, 0]]


def test_gae_gamma_1_lam_095():
    advantages, returns = core.gae(t(GAE_REWARDS), t(GAE_VALUES), t(GAE_MASK), gamma=1.0, lam=0.95)
    # row 0: delta2 = 1.0 + 0 - 0.6 = 0.4                A2 = 0.4
    #        delta1 = -0.2 + 0.6 - 0.3 = 0.1             A1 = 0.1 + 0.95 * 0.4 = 0.48
    #        delta0 = 0.1 + 0.3 - 0.5 = -0.1             A0 = -0.1 + 0.95 * 0.48 = 0.356
    # row 1 (ends at index 1, next value 0):
    #        delta1 = 0.5 + 0 - (-0.1) = 0.6             A1 = 0.6
    #        delta0 = 0.4 + (-0.1) - 0.2 = 0.1           A0 = 0.1 + 0.95 * 0.6 = 0.67
    assert_values(advantages, [[0.356, 0.48, 0.4], [0.67, 0.6, 0.0]])
    # returns = advantages + values on real tokens, 0 on padding
    assert_values(returns, [[0.356 + 0.5, 0.48 + 0.3, 0.4 + 0.6], [0.67 + 0.2, 0.6 - 0.1, 0.0]])


def test_gae_gamma_09_lam_08():
    advantages, returns = core.gae(t(GAE_REWARDS), t(GAE_VALUES), t(GAE_MASK), gamma=0.9, lam=0.8)
    # gamma * lam = 0.72
    # row 0: delta2 = 1.0 + 0.9 * 0 - 0.6 = 0.4          A2 = 0.4
    #        delta1 = -0.2 + 0.9 * 0.6 - 0.3 = 0.04      A1 = 0.04 + 0.72 * 0.4 = 0.328
    #        delta0 = 0.1 + 0.9 * 0.3 - 0.5 = -0.13      A0 = -0.13 + 0.72 * 0.328 = 0.10616
    # row 1: delta1 = 0.5 + 0 + 0.1 = 0.6                A1 = 0.6
    #        delta0 = 0.4 + 0.9 * (-0.1) - 0.2 = 0.11    A0 = 0.11 + 0.72 * 0.6 = 0.542
    assert_values(advantages, [[0.10616, 0.328, 0.4], [0.542, 0.6, 0.0]])
    assert_values(returns, [[0.10616 + 0.5, 0.328 + 0.3, 1.0], [0.542 + 0.2, 0.5, 0.0]])


@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 0.95), (0.9, 0.8)])
def test_gae_padding_has_no_influence(gamma, lam):
    first = core.gae(t(GAE_REWARDS), t(GAE_VALUES), t(GAE_MASK), gamma=gamma, lam=lam)
    rewards = t([[0.1, -0.2, 1.0], [0.4, 0.5, -123.0]])
    values = t([[0.5, 0.3, 0.6], [0.2, -0.1, 55.0]])
    second = core.gae(rewards, values, t(GAE_MASK), gamma=gamma, lam=lam)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert first[0][1, 2].item() == 0.0 and first[1][1, 2].item() == 0.0


# ---------------------------------------------------------------------------------------------- losses
# cliprange 0.2; tokens (advantage, ratio):
#   row 0: (+1, 1.5) clipped to 1.2 | (-1, 0.5) clipped to 0.8 | (+2, 0.5) not clipped (pessimistic side)
#   row 1: (-0.5, 1.1) inside the range | (-1, 1.5) not clipped (pessimistic side) | padding
RATIOS = [[1.5, 0.5, 0.5], [1.1, 1.5, math.exp(3.0)]]
ADVANTAGES = [[1.0, -1.0, 2.0], [-0.5, -1.0, 100.0]]
OLD_LOGPROBS = [[-1.0, -2.0, -0.5], [-1.2, -0.7, -0.3]]
LOSS_MASK = [[1, 1, 1], [1, 1, 0]]


def policy_inputs():
    old = t(OLD_LOGPROBS)
    logprobs = (old + t([[math.log(r) for r in row] for row in RATIOS])).requires_grad_(True)
    return logprobs, old, t(ADVANTAGES), t(LOSS_MASK)


def test_policy_loss_by_hand():
    logprobs, old, advantages, mask = policy_inputs()
    loss, stats = core.policy_loss(logprobs, old, advantages, mask, cliprange=0.2)
    # per token max(-A * ratio, -A * clip(ratio)):
    #   max(-1.5, -1.2) = -1.2 | max(0.5, 0.8) = 0.8 | max(-1.0, -1.6) = -1.0 | max(0.55, 0.55) = 0.55
    #   | max(1.5, 1.2) = 1.5       mean over 5 real tokens: (-1.2 + 0.8 - 1.0 + 0.55 + 1.5) / 5 = 0.13
    assert_values(loss, (-1.2 + 0.8 - 1.0 + 0.55 + 1.5) / 5)
    assert_values(loss, 0.13)
    # the clipped term won (strictly) on the first two tokens only
    assert_values(stats["clipfrac"], 2 / 5)
    lr2 = [math.log(1.5) ** 2, math.log(0.5) ** 2, math.log(0.5) ** 2, math.log(1.1) ** 2, math.log(1.5) ** 2]
    assert_values(stats["approxkl"], 0.5 * sum(lr2) / 5)
    # old TRL's k1 estimate: mean(log p_old - log p) = -mean(log ratio)
    lr = [math.log(1.5), math.log(0.5), math.log(0.5), math.log(1.1), math.log(1.5)]
    assert_values(stats["policykl"], -sum(lr) / 5)
    assert_values(stats["ratio"], (1.5 + 0.5 + 0.5 + 1.1 + 1.5) / 5)  # 1.02
    # deviations from 1.02: .48, -.52, -.52, .08, .48 -> squares sum to 1.008, unbiased / 4
    assert_values(stats["ratio_var"], 1.008 / 4)
    assert all(not value.requires_grad for value in stats.values())


def test_policy_loss_gradient_is_zero_on_clipped_tokens():
    logprobs, old, advantages, mask = policy_inputs()
    loss, _ = core.policy_loss(logprobs, old, advantages, mask, cliprange=0.2)
    loss.backward()
    # d/dlogp of -A * exp(logp - old) / 5 is -A * ratio / 5 where unclipped; 0 where clipped and on padding
    expected = [[0.0, 0.0, -2.0 * 0.5 / 5], [0.5 * 1.1 / 5, 1.0 * 1.5 / 5, 0.0]]
    assert_values(logprobs.grad, expected)
    assert logprobs.grad[0, 0].item() == 0.0 and logprobs.grad[0, 1].item() == 0.0


def test_policy_loss_no_clipping_with_wide_range():
    logprobs, old, advantages, mask = policy_inputs()
    loss, stats = core.policy_loss(logprobs, old, advantages, mask, cliprange=10.0)
    # nothing clipped: mean of -A * ratio = (-1.5 + 0.5 - 1.0 + 0.55 + 1.5) / 5 = 0.01
    assert_values(loss, 0.01)
    assert_values(stats["clipfrac"], 0.0)


def test_value_loss_by_hand():
    # cliprange_value 0.2; tokens (V, V_old, R):
    #   (1.0, 0.5, 1.0):  Vc = 0.7;  unclipped 0,   clipped 0.09 -> 0.09, clipped wins
    #   (0.6, 0.5, 2.0):  Vc = 0.6;  both 1.96                     -> 1.96, a tie is not clipped
    #   (0.0, 0.5, -1.0): Vc = 0.3;  unclipped 1,   clipped 1.69 -> 1.69, clipped wins
    #   (2.0, 1.0, 1.0):  Vc = 1.2;  unclipped 1,   clipped 0.04 -> 1.0, unclipped wins
    #   padding (row 1, tokens 1-2): anything
    values = t([[1.0, 0.6, 0.0], [2.0, 50.0, -50.0]])
    old_values = t([[0.5, 0.5, 0.5], [1.0, 0.0, 0.0]])
    returns = t([[1.0, 2.0, -1.0], [1.0, 0.0, 0.0]])
    mask = t([[1, 1, 1], [1, 0, 0]])
    loss, stats = core.value_loss(values, old_values, returns, mask, cliprange_value=0.2)
    assert_values(loss, 0.5 * (0.09 + 1.96 + 1.69 + 1.0) / 4)  # 0.5925
    assert_values(stats["clipfrac"], 2 / 4)
    assert_values(stats["error"], (0.0 + 1.96 + 1.0 + 1.0) / 4)  # unclipped squared error: 0.99


def test_value_loss_unclipped_with_wide_range():
    values = t([[1.0, 0.6, 0.0], [2.0, 50.0, -50.0]])
    old_values = t([[0.5, 0.5, 0.5], [1.0, 0.0, 0.0]])
    returns = t([[1.0, 2.0, -1.0], [1.0, 0.0, 0.0]])
    mask = t([[1, 1, 1], [1, 0, 0]])
    loss, stats = core.value_loss(values, old_values, returns, mask, cliprange_value=10.0)
    assert_values(loss, 0.5 * (0.0 + 1.96 + 1.0 + 1.0) / 4)
    assert_values(stats["clipfrac"], 0.0)


# --------------------------------------------------------------------------------------- KL controllers
def test_fixed_kl_controller_never_changes():
    controller = core.FixedKLController(0.05)
    for kl, n in [(100.0, 64), (0.0, 1), (-3.0, 512)]:
        controller.update(kl, n)
        assert controller.value == 0.05
    assert controller.state_dict() == {"value": 0.05}
    other = core.FixedKLController(0.3)
    other.load_state_dict(controller.state_dict())
    assert other.value == 0.05


@pytest.mark.parametrize(
    ("kl", "expected"),
    [
        (6.6, 0.2 * (1 + 0.1 * 256 / 10000)),  # 6.6 / 6 - 1 = +0.1 -> 0.200512
        (5.4, 0.2 * (1 - 0.1 * 256 / 10000)),  # 5.4 / 6 - 1 = -0.1 -> 0.199488
        (60.0, 0.2 * (1 + 0.2 * 256 / 10000)),  # 60 / 6 - 1 = 9 clipped to +0.2 -> 0.201024
        (0.0, 0.2 * (1 - 0.2 * 256 / 10000)),  # -1 clipped to -0.2 -> 0.198976
        (-2.0, 0.2 * (1 - 0.2 * 256 / 10000)),  # a negative (k1) KL: clipped to -0.2 too
    ],
)
def test_adaptive_kl_controller_update(kl, expected):
    controller = core.AdaptiveKLController(0.2, target=6.0, horizon=10000)
    controller.update(kl, 256)
    assert controller.value == pytest.approx(expected, rel=1e-12)


def test_adaptive_kl_controller_hand_values_and_state_dict():
    controller = core.AdaptiveKLController(0.2, target=6.0, horizon=10000)
    controller.update(6.6, 256)
    assert controller.value == pytest.approx(0.200512, rel=1e-12)
    controller.update(60.0, 100)  # clipped to +0.2: * (1 + 0.2 * 100 / 10000) = * 1.002
    assert controller.value == pytest.approx(0.200512 * 1.002, rel=1e-12)
    restored = core.AdaptiveKLController(1.0, target=6.0, horizon=10000)
    restored.load_state_dict(controller.state_dict())
    assert restored.value == controller.value
    controller.update(3.0, 50)
    restored.update(3.0, 50)  # 3 / 6 - 1 = -0.5 clipped to -0.2: * (1 - 0.2 * 50 / 10000) = * 0.999
    assert restored.value == controller.value == pytest.approx(0.200512 * 1.002 * 0.999, rel=1e-12)


# ------------------------------------------------------------------------------------- RunningMoments
def test_running_moments_match_concatenation():
    first, second = t([1.0, 2.0, 3.0, 4.0]), t([10.0, 20.0])
    moments = core.RunningMoments()
    moments.update(first)
    # one batch: mean 2.5, population variance (2.25 + 0.25 + 0.25 + 2.25) / 4 = 1.25
    assert moments.mean == pytest.approx(2.5, rel=1e-12)
    assert moments.std == pytest.approx(math.sqrt(1.25), rel=1e-12)
    moments.update(second)
    everything = torch.cat([first, second])
    assert moments.mean == pytest.approx(everything.mean().item(), rel=1e-12)
    assert moments.std == pytest.approx(everything.std(unbiased=False).item(), rel=1e-12)
    # by hand: mean 40 / 6; variance 530 / 6 - (40 / 6)^2 = 43.888...
    assert moments.mean == pytest.approx(40 / 6, rel=1e-12)
    assert moments.std == pytest.approx(math.sqrt(530 / 6 - (40 / 6) ** 2), rel=1e-12)
    assert moments.count == pytest.approx(6)


def test_running_moments_random_batches():
    gen = torch.Generator().manual_seed(7)
    batches = [torch.randn(5, generator=gen) * 3 + 1, torch.randn(3, generator=gen) - 2]
    moments = core.RunningMoments()
    for batch in batches:
        moments.update(batch)
    everything = torch.cat(batches).double()
    assert moments.mean == pytest.approx(everything.mean().item(), rel=1e-9)
    assert moments.std == pytest.approx(everything.std(unbiased=False).item(), rel=1e-9)


def test_running_moments_normalize():
    moments = core.RunningMoments()
    moments.update(t([1.0, 2.0, 3.0, 4.0]))  # mean 2.5, std sqrt(1.25)
    # (2.5 - 2.5) / std = 0; (5 - 2.5) / sqrt(1.25) = sqrt(5); (0 - 2.5) / sqrt(1.25) = -sqrt(5)
    assert_values(moments.normalize(t([2.5, 5.0, 0.0])), [0.0, math.sqrt(5), -math.sqrt(5)])


def test_running_moments_state_dict_round_trip():
    moments = core.RunningMoments()
    moments.update(t([1.0, 2.0, 3.0, 4.0]))
    restored = core.RunningMoments()
    restored.load_state_dict(moments.state_dict())
    assert (restored.mean, restored.std, restored.count) == (moments.mean, moments.std, moments.count)
    moments.update(t([10.0, 20.0]))
    restored.update(t([10.0, 20.0]))
    assert restored.mean == moments.mean == pytest.approx(40 / 6, rel=1e-12)
    assert restored.std == moments.std
