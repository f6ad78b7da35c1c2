"""Router losses as plain functions (OLMo-core style); the layer decides the weights."""

from __future__ import annotations

import torch


def sequence_balance_loss(scores_BTE: torch.Tensor, top_idx_BTK: torch.Tensor) -> torch.Tensor:
    """DeepSeek-V3's complementary sequence-wise balance loss, averaged over sequences.

    Per sequence: sum_i f_i * P_i with f_i = E / (K T) * (tokens choosing i) and
    P_i = mean over tokens of the normalised score s_i / sum_j s_j. It is 1 when
    routing is perfectly balanced and grows as it concentrates.
    """
    B, T, E = scores_BTE.shape
    K = top_idx_BTK.shape[-1]
    probs_BTE = scores_BTE / (scores_BTE.sum(-1, keepdim=True) + 1e-20)
    p_BE = probs_BTE.mean(1)
    with torch.no_grad():
        counts_BE = torch.zeros(B, E, device=scores_BTE.device, dtype=p_BE.dtype)
        counts_BE.scatter_add_(
            1, top_idx_BTK.reshape(B, T * K), torch.ones(B, T * K, device=p_BE.device, dtype=p_BE.dtype)
        )
        f_BE = counts_BE * (E / (K * T))
    return (f_BE * p_BE).sum(-1).mean()


def router_z_loss(logits_TE: torch.Tensor) -> torch.Tensor:
    """Mean squared log-sum-exp of the router logits: keeps them from drifting large."""
    return torch.logsumexp(logits_TE.float(), dim=-1).pow(2).mean()


def load_imbalance(tokens_E: torch.Tensor) -> torch.Tensor:
    """max/mean tokens per expert: 1 is perfectly balanced."""
    return tokens_E.max() / tokens_E.float().mean().clamp_min(1e-9)
