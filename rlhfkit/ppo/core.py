"""The PPO math as small pure functions on tensors, each checked against hand-computed numbers in the tests.

Shapes: ``B`` sequences, ``T`` response tokens. ``mask`` is 1 on real response tokens (up to and including
the stop token) and 0 on padding after it. Every statistic is *masked*: padding never enters a mean, a
variance, an advantage or a loss.

Sources, and where ours differs:

* Huang et al. 2024, "The N+ Implementation Details of RLHF with PPO" (NeurIPS), and TRL 1.12's
  ``trl.experimental.ppo.PPOTrainer`` (the last TRL release with PPO): per-token KL penalty, score added at
  the last real token, GAE over the response, whitened advantages, clipped policy and value losses.
* Schulman et al. 2017 (PPO), Schulman et al. 2016 (GAE).
* J. Schulman, "Approximating KL divergence" (2020): the k1 and k3 estimators.
* Ziegler et al. 2019 (``lm-human-preferences``): the adaptive KL controller and its proportional rule.
"""

from __future__ import annotations

import math

import torch

KL_ESTIMATORS = ("k1", "k3")


# ------------------------------------------------------------------------------------ masked statistics
def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is 1 (over everything, or along ``dim``)."""
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``values`` where ``mask`` is 1; unbiased (Bessel's correction) by default, as in TRL."""
    mean = masked_mean(values, mask)
    centred = (values - mean) ** 2
    variance = masked_mean(centred, mask)
    if unbiased:
        count = mask.sum()
        if count > 1:
            variance = variance * count / (count - 1)
    return variance


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Scale to unit variance over the masked entries; centre too unless ``shift_mean`` is False.

    Masked-out entries come back as 0, so they cannot leak into a later sum.
    """
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(values.dtype)


# ------------------------------------------------------------------------------------------------ entropy
def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy (nats) of the sampling distribution at each position: logsumexp(z) - sum(softmax(z) * z)."""
    logits = logits.float() / temperature
    probs = logits.softmax(-1)
    weighted = torch.where(probs > 0, probs * logits, torch.zeros_like(logits))  # 0 * -inf (masked logits) is 0
    return torch.logsumexp(logits, -1) - weighted.sum(-1)


# ----------------------------------------------------------------------------------------- KL estimators
def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from the log-probs of tokens sampled from the policy.

    * ``k1 = log p - log p_ref``: unbiased, but a single sample can be negative;
    * ``k3 = (r - 1) - log r`` with ``r = p_ref / p``: unbiased and never negative (Schulman 2020), so the
      logged KL cannot go negative however the sampling was set up.
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio  # (r - 1) - log r, with log r = -log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}: use one of {KL_ESTIMATORS}")


# ---------------------------------------------------------------------------------------------- indices
def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real (mask 1) token of each row, whatever the padding side.

    This is where a reward is read: the last real token, never the token after EOS (the known upstream bug
    of finding the first pad id, which lands one past the end, or on EOS itself when pad == EOS). A row
    with no real token gives 0.
    """
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.long() * positions).argmax(-1)


# ------------------------------------------------------------------------------------ reward shaping
def shape_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    estimator: str = "k1",
):
    """Per-token rewards: ``-kl_coef * KL_t`` on every real token plus the score on the last real token.

    Returns ``(rewards, kl)`` with ``kl`` the per-token estimate (0 on padding). As in TRL 1.12 / Huang et
    al. 2024; the KL estimator is a choice here (TRL's ``kl_estimator``).
    """
    mask = mask.to(logprobs.dtype)
    kl = kl_estimate(logprobs, ref_logprobs, estimator) * mask
    rewards = -kl_coef * kl
    last = last_token_index(mask)
    rewards[torch.arange(rewards.shape[0], device=rewards.device), last] += scores.to(rewards.dtype)
    return rewards, kl


# ------------------------------------------------------------------------------------------------- GAE
def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95):
    """Generalised advantage estimation over the response (Schulman et al. 2016).

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` and ``A_t = delta_t + gamma * lam * A_{t+1}``, with rewards and
    values zeroed on padding, so the episode ends at the last real token (its next value is 0). Returns
    ``(advantages, returns)`` with ``returns = advantages + values`` (the value targets), both 0 on padding.
    """
    mask = mask.to(values.dtype)
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    width = values.shape[1]
    for t in reversed(range(width)):
        next_value = values[:, t + 1] if t + 1 < width else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


# ---------------------------------------------------------------------------------------------- losses
def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate: ``max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps))``, masked mean.

    Stats (detached): ``clipfrac`` (share of tokens where the clipped term won), ``approxkl``
    (``0.5 * mean((log ratio)^2)``, TRL 1.x's k2 estimate), ``policykl`` (``mean(log p_old - log p)``, old
    TRL's k1 estimate, which its early stopping reads), ``ratio`` (mean) and ``ratio_var``.
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).float(), mask),
            "approxkl": 0.5 * masked_mean(log_ratio**2, mask),
            "policykl": masked_mean(-log_ratio, mask),
            "ratio": masked_mean(ratio, mask),
            "ratio_var": masked_var(ratio, mask),
        }
    return loss, stats


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    cliprange_value: float = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss: ``0.5 * max((V - R)^2, (clip(V, V_old +- eps) - R)^2)``, masked mean.

    Stats: ``clipfrac`` (share of tokens where the clipped error won), ``error`` (masked mean squared error).
    """
    clipped_values = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    unclipped_error = (values - returns) ** 2
    clipped_error = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(unclipped_error, clipped_error), mask)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped_error > unclipped_error).float(), mask),
            "error": masked_mean(unclipped_error, mask),
        }
    return loss, stats


# --------------------------------------------------------------------------------------- KL controllers
class FixedKLController:
    """A constant KL coefficient (TRL 1.x's ``kl_coef``)."""

    def __init__(self, kl_coef: float):
        self.value = kl_coef

    def update(self, current_kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class AdaptiveKLController(FixedKLController):
    """Ziegler et al. 2019's proportional controller (old TRL's ``adap_kl_ctrl``: init 0.2, target 6,
    horizon 10000): ``kl_coef *= 1 + clip(KL / target - 1, -0.2, 0.2) * n_steps / horizon``.

    ``current_kl`` is the mean per-sequence KL (summed over tokens) of the batch, ``n_steps`` the episodes in it.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        super().__init__(init_kl_coef)
        self.target, self.horizon = target, horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon


class RunningMoments:
    """Running mean and (population) standard deviation of the scores (for ``--normalize_scores``), merged
    batch by batch with Chan et al.'s parallel update, as TRL's ``RunningMoments`` (which reports the
    unbiased std; with batches of dozens of scores the difference is negligible)."""

    def __init__(self):
        self.mean, self.var, self.count = 0.0, 1.0, 1e-24

    def update(self, values: torch.Tensor) -> None:
        values = values.double()
        n = values.numel()
        batch_mean, batch_var = values.mean().item(), values.var(unbiased=False).item()
        delta, total = batch_mean - self.mean, self.count + n
        m2 = self.var * self.count + batch_var * n + delta**2 * self.count * n / total
        self.mean += delta * n / total
        self.var, self.count = m2 / total, total

    @property
    def std(self) -> float:
        return math.sqrt(max(self.var, 0.0))

    def normalize(self, values: torch.Tensor) -> torch.Tensor:
        return (values - self.mean) / (self.std + 1e-8)

    def state_dict(self) -> dict:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.var, self.count = float(state["mean"]), float(state["var"]), float(state["count"])

