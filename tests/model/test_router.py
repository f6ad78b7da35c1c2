"""Sigmoid router, aux-loss-free bias updates, router losses."""

from __future__ import annotations

import torch

from kimi_lab.config.schema import MoEConfig
from kimi_lab.model.moe.balance import update_router_biases
from kimi_lab.model.moe.layer import MoELayer
from kimi_lab.model.moe.losses import load_imbalance, router_z_loss, sequence_balance_loss
from kimi_lab.model.moe.router import SigmoidRouter


def test_bias_changes_the_choice_but_not_the_gate_weights() -> None:
    torch.manual_seed(0)
    router = SigmoidRouter(dim=4, n_experts=4, top_k=2, scaling=2.5)
    x = torch.randn(6, 4)
    before = router(x)
    torch.testing.assert_close(before.top_weight_TK.sum(-1), torch.full((6,), 2.5))
    # A huge bias on expert 3 makes every token choose it...
    router.expert_bias[3] = 100.0
    after = router(x)
    assert (after.top_idx_TK == 3).any(-1).all()
    # ...but its gate weight is still its own unbiased score, renormalised over the chosen two.
    scores = torch.sigmoid(x @ router.weight.T)
    chosen = scores.gather(1, after.top_idx_TK)
    torch.testing.assert_close(after.top_weight_TK, chosen / chosen.sum(-1, keepdim=True) * 2.5)


def test_counts_only_in_training_and_bias_update_direction() -> None:
    torch.manual_seed(0)
    router = SigmoidRouter(dim=4, n_experts=4, top_k=1)
    router.eval()
    router(torch.randn(8, 4))
    assert router.tokens_per_expert.sum() == 0
    router.train()
    router.tokens_per_expert.copy_(torch.tensor([10.0, 0.0, 5.0, 5.0]))
    counts, biases = update_router_biases(router, rate=0.1)
    torch.testing.assert_close(counts[0], torch.tensor([10.0, 0.0, 5.0, 5.0]))
    b = router.expert_bias
    assert b[0] < b[2] == b[3] < b[1]  # overloaded down, starved up, balanced in between
    assert abs(float(b.sum())) < 1e-6  # centred
    assert router.tokens_per_expert.sum() == 0  # reset for the next step
    torch.testing.assert_close(biases[0], b)


def test_padding_is_routed_but_never_counted() -> None:
    """Loads (balancing and moe_load.parquet) and the balance loss count real tokens only: a padded
    batch gives what its real tokens alone give."""
    torch.manual_seed(0)
    cfg = MoEConfig(n_routed_experts=8, n_shared_experts=0, top_k=2, expert_ffn_dim=8, seq_aux_loss_coef=1.0)
    layer = MoELayer(16, cfg).train()
    x = torch.randn(2, 10, 16, requires_grad=True)
    real = torch.ones(2, 10, dtype=torch.bool)
    real[0, 6:] = False  # the first sequence ends in 4 padding tokens
    _, aux = layer(x, real)
    padded_counts = layer.router.tokens_per_expert.clone()
    assert padded_counts.sum() == real.sum() * cfg.top_k

    layer.router.tokens_per_expert.zero_()
    alone = [layer(x[i : i + 1, real[i]], None)[1].seq_balance for i in range(2)]
    assert torch.equal(layer.router.tokens_per_expert, padded_counts)  # the same real tokens, the same load
    torch.testing.assert_close(aux.seq_balance, torch.stack(alone).mean())


def _skewed_run(rate: float, steps: int = 60) -> list[float]:
    torch.manual_seed(0)
    cfg = MoEConfig(n_routed_experts=8, n_shared_experts=0, top_k=2, expert_ffn_dim=8, bias_update_rate=rate)
    layer = MoELayer(16, cfg)
    with torch.no_grad():
        layer.router.weight.normal_(0, 0.3)
        layer.router.weight[:2, 0] += 2.0  # feature 0 is always on: experts 0 and 1 are favoured
    data = torch.randn(steps, 4, 32, 16)
    data[..., 0] = 1.0
    imbalance = []
    for step in range(steps):
        layer(data[step])
        counts, _ = update_router_biases(layer, rate)
        imbalance.append(float(load_imbalance(counts[0])))
    return imbalance


def test_bias_updates_balance_a_skewed_router_over_steps() -> None:
    """Same router, same data: with bias updates the load evens out, without them it stays skewed."""
    balanced, control = _skewed_run(rate=0.01), _skewed_run(rate=0.0)
    assert balanced[0] == control[0] > 3.0  # max/mean of 4 means two experts take everything
    late = sum(balanced[-10:]) / 10
    assert sum(control[-10:]) / 10 > 3.0
    assert late < 1.6 and late < 0.5 * control[-1]


def test_sequence_balance_loss_is_one_when_balanced_and_larger_when_not() -> None:
    B, T, E, K = 1, 8, 4, 1
    uniform = torch.full((B, T, E), 0.5)
    balanced = torch.arange(T).remainder(E).view(B, T, K)
    assert torch.isclose(sequence_balance_loss(uniform, balanced), torch.tensor(1.0))
    skewed_scores = torch.tensor([0.9, 0.1, 0.1, 0.1]).expand(B, T, E)
    all_on_zero = torch.zeros(B, T, K, dtype=torch.long)
    assert sequence_balance_loss(skewed_scores, all_on_zero) > 2.0


def test_router_losses_enter_the_layer_output_with_their_weights() -> None:
    torch.manual_seed(0)
    cfg = MoEConfig(n_routed_experts=4, top_k=2, expert_ffn_dim=8, seq_aux_loss_coef=0.5, z_loss_coef=0.25)
    layer = MoELayer(8, cfg)
    _, aux = layer(torch.randn(2, 5, 8))
    expected = 0.5 * aux.seq_balance + 0.25 * aux.z_loss
    torch.testing.assert_close(aux.loss.detach(), expected)
    assert aux.loss.requires_grad
    logits = torch.randn(5, 4)
    torch.testing.assert_close(router_z_loss(logits), torch.logsumexp(logits, -1).pow(2).mean())
