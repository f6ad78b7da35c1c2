"""Router losses as plain functions (OLMo-core style); the layer decides the weights."""

from __future__ import annotations

import torch


def sequence_balance_loss(
    scores_BTE: torch.Tensor, top_idx_BTK: torch.Tensor, real_BT: torch.Tensor | None = None
) -> torch.Tensor:
    """DeepSeek-V3's complementary sequence-wise balance loss, averaged over sequences.

    Per sequence: sum_i f_i * P_i with f_i = E / (K T) * (tokens choosing i) and
    P_i = mean over tokens of the normalised score s_i / sum_j s_j. It is 1 when
    routing is perfectly balanced and grows as it concentrates. With ``real_BT``
    (B, T) bool, T counts each sequence's real tokens and padding takes no part.
    """
    B, T, E = scores_BTE.shape
    K = top_idx_BTK.shape[-1]
    w_BT = torch.ones(B, T, device=scores_BTE.device) if real_BT is None else real_BT.float()
    n_B1 = w_BT.sum(1, keepdim=True).clamp_min(1.0)
    probs_BTE = scores_BTE / (scores_BTE.sum(-1, keepdim=True) + 1e-20)
    p_BE = (probs_BTE * w_BT[..., None]).sum(1) / n_B1
    with torch.no_grad():
        counts_BE = torch.zeros(B, E, device=scores_BTE.device, dtype=p_BE.dtype)
        ones_BTK = w_BT[..., None].expand(B, T, K).to(p_BE.dtype)
        counts_BE.scatter_add_(1, top_idx_BTK.reshape(B, T * K), ones_BTK.reshape(B, T * K))
        f_BE = counts_BE * (E / K) / n_B1
    return (f_BE * p_BE).sum(-1).mean()


def router_z_loss(logits_TE: torch.Tensor) -> torch.Tensor:
    """Mean squared log-sum-exp of the router logits: keeps them from drifting large."""
    return torch.logsumexp(logits_TE.float(), dim=-1).pow(2).mean()


def load_imbalance(tokens_E: torch.Tensor) -> torch.Tensor:
    """max/mean tokens per expert: 1 is perfectly balanced."""
    return tokens_E.max() / tokens_E.float().mean().clamp_min(1e-9)
