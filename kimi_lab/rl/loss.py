"""The K2.5 policy loss, group advantages, and the Toggle length-budget schedule.

For K samples per prompt with rewards r_j and N sampled tokens in all:

    L = -(1/N) sum_j sum_i 1[alpha <= log(pi/pi_old)(y_i^j) <= beta] * (r_j - mean r) / tau * log pi(y_i^j)

Tokens whose log-ratio to the sampling policy leaves [alpha, beta] are dropped
whatever the advantage's sign (unlike PPO's clip, which keeps one side).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def group_advantages(rewards: torch.Tensor, group_size: int, tau: float) -> torch.Tensor:
    """(r - mean of its group of K) / tau; groups are consecutive runs of ``group_size``."""
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    r = rewards.view(-1, group_size)
    return ((r - r.mean(dim=1, keepdim=True)) / tau).reshape(-1)


@dataclass
class PolicyLoss:
    loss: torch.Tensor
    kept_fraction: float  # sampled tokens inside [alpha, beta]
    mean_log_ratio: float


def k25_policy_loss(
    logp_new: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor, alpha: float, beta: float
) -> PolicyLoss:
    """All tensors (N,) over the sampled tokens; ``advantages`` is each token's sample's advantage."""
    n = logp_new.numel()
    if n == 0:
        zero = logp_new.sum()
        return PolicyLoss(zero, 1.0, 0.0)
    log_ratio = logp_new.detach() - logp_old
    keep = (log_ratio >= alpha) & (log_ratio <= beta)
    loss = -(keep * advantages * logp_new).sum() / n
    return PolicyLoss(loss, float(keep.float().mean()), float(log_ratio.mean()))


class Toggle:
    """K2.5's Toggle: alternate blocks of ``every`` steps; in the "budget" blocks, when the
    batch's mean accuracy exceeds ``lam``, each prompt's responses get a length reward
    against a budget = the ``rho``-th percentile of that prompt's correct responses' lengths."""

    def __init__(self, every: int, lam: float, rho: float) -> None:
        self.every, self.lam, self.rho = every, lam, rho

    def active(self, step: int) -> bool:
        return self.every > 0 and (step // self.every) % 2 == 1

    def apply(
        self, step: int, rewards: list[float], correct: list[bool], lengths: list[int], group_size: int
    ) -> tuple[list[float], bool]:
        """Rewards with the length term added where it applies, and whether it applied."""
        from kimi_lab.tasks.rewards import toggle_length_reward

        if not self.active(step) or not correct or float(np.mean(correct)) <= self.lam:
            return rewards, False
        out = list(rewards)
        for g in range(0, len(rewards), group_size):
            ok = [lengths[i] for i in range(g, g + group_size) if correct[i]]
            if not ok:
                continue
            budget = float(np.percentile(ok, self.rho))
            for i in range(g, g + group_size):
                out[i] += toggle_length_reward(lengths[i], budget) - 1.0
        return out, True
