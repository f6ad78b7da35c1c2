"""Sigmoid top-k router with aux-loss-free balancing (DeepSeek-V3 ``noaux_tc``, K2).

Shape legend: T tokens, D hidden, E routed experts, K experts per token.

Scores are sigmoid(x W^T), computed in fp32. A per-expert bias is added to the
scores only to *choose* the top-k; the gate weights are the unbiased scores of
the chosen experts, renormalised to sum to one, times ``routed_scaling_factor``.
The router counts tokens per expert while training (a buffer, summed over
micro-batches), real tokens only: padding is routed (its outputs are never
used) but not counted, so it neither moves the balancing biases nor shows in
``moe_load.parquet``. ``update_router_biases`` turns the counts into bias
nudges after each optimizer step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Routing:
    top_idx_TK: torch.Tensor  # int64 expert ids
    top_weight_TK: torch.Tensor  # fp32 gate weights (unbiased, renormalised, scaled)
    scores_TE: torch.Tensor  # fp32 sigmoid scores (for the sequence-wise balance loss)
    logits_TE: torch.Tensor  # fp32 router logits (for the z-loss)


class SigmoidRouter(nn.Module):
    def __init__(
        self, dim: int, n_experts: int, top_k: int, scaling: float = 1.0, init_std: float = 0.02
    ) -> None:
        super().__init__()
        self.n_experts, self.top_k, self.scaling = n_experts, top_k, scaling
        self.weight = nn.Parameter(torch.empty(n_experts, dim))
        nn.init.normal_(self.weight, std=init_std)
        # Selection-only bias: persistent, so it is saved in checkpoints and resumed.
        self.register_buffer("expert_bias", torch.zeros(n_experts))
        # Tokens routed to each expert since the last optimizer step (training only).
        self.register_buffer("tokens_per_expert", torch.zeros(n_experts), persistent=False)

    def forward(self, x_TD: torch.Tensor, real_T: torch.Tensor | None = None) -> Routing:
        """``real_T`` (T,) bool: which tokens are real (not padding); None: all are."""
        with torch.autocast(device_type=x_TD.device.type, enabled=False):
            logits_TE = F.linear(x_TD.float(), self.weight.float())
        scores_TE = torch.sigmoid(logits_TE)
        with torch.no_grad():
            top_idx_TK = torch.topk(
                scores_TE + self.expert_bias.float(), self.top_k, dim=-1, sorted=False
            ).indices
        top_weight_TK = scores_TE.gather(1, top_idx_TK)
        top_weight_TK = top_weight_TK / (top_weight_TK.sum(-1, keepdim=True) + 1e-20) * self.scaling
        # Not while a backward pass recomputes a checkpointed layer: those tokens were counted once.
        if self.training and torch.is_grad_enabled() and torch._C._current_graph_task_id() == -1:
            counted_TK = top_idx_TK if real_T is None else top_idx_TK[real_T]
            self.tokens_per_expert += torch.bincount(counted_TK.reshape(-1), minlength=self.n_experts).float()
        return Routing(top_idx_TK, top_weight_TK, scores_TE, logits_TE)
