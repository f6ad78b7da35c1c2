"""The K2.5 policy loss: group advantages, and the [alpha, beta] mask that ignores the sign."""

from __future__ import annotations

import pytest
import torch

from kimi_lab.rl.loss import Toggle, group_advantages, k25_policy_loss


def test_group_advantages_center_each_prompts_samples() -> None:
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0]), group_size=3, tau=0.5)
    assert torch.allclose(adv, torch.tensor([4 / 3, -2 / 3, -2 / 3, -4 / 3, 2 / 3, 2 / 3]))
    with pytest.raises(ValueError):
        group_advantages(torch.ones(5), 2, 1.0)


def test_tokens_outside_the_log_ratio_band_are_dropped_whatever_the_sign() -> None:
    logp_new = torch.tensor([-1.0, -1.0, -1.0, -1.0], requires_grad=True)
    logp_old = torch.tensor([-1.0, -1.5, -0.5, -1.05])  # log ratios 0, +0.5, -0.5, +0.05
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    out = k25_policy_loss(logp_new, logp_old, adv, alpha=-0.2, beta=0.2)
    out.loss.backward()
    # kept: tokens 0 and 3 (one positive, one negative advantage); N = 4 in the normaliser
    assert out.kept_fraction == 0.5
    assert torch.allclose(logp_new.grad, torch.tensor([-0.25, 0.0, 0.0, 0.25]))
    assert float(out.loss.detach()) == pytest.approx(-(1.0 * -1.0 + -1.0 * -1.0) / 4)


def test_toggle_applies_only_in_its_blocks_and_above_the_accuracy_bar() -> None:
    t = Toggle(every=2, lam=0.5, rho=50)
    rewards, correct, lengths = [1.0, 1.0, 1.0, 0.0], [True, True, True, False], [10, 20, 40, 5]
    assert t.apply(0, rewards, correct, lengths, 4) == (rewards, False)  # an off block
    shaped, applied = t.apply(2, rewards, correct, lengths, 4)
    assert applied and shaped[0] == 1.0 and shaped[2] < 1.0  # over the median correct length
    assert t.apply(2, rewards, [True, False, False, False], lengths, 4)[1] is False  # accuracy too low
