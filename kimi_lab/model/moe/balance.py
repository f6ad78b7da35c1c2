"""Aux-loss-free load balancing: turn each step's token counts into router-bias nudges."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from kimi_lab.model.moe.router import SigmoidRouter


def routers(model: nn.Module) -> list[SigmoidRouter]:
    return [m for m in model.modules() if isinstance(m, SigmoidRouter)]


@torch.no_grad()
def update_router_biases(model: nn.Module, rate: float) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Apply bias += rate * sign(mean load - load) in every MoE layer, then reset the counts.

    Counts are summed over data-parallel ranks first, so every rank applies the
    same update and the returned counts are global. Returns (tokens (L, E),
    biases after the update (L, E)), or None for a model without MoE layers.
    """
    rs = routers(model)
    if not rs:
        return None
    counts_LE = torch.stack([r.tokens_per_expert for r in rs])
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(counts_LE)
    for r, counts_E in zip(rs, counts_LE):
        if rate > 0 and counts_E.sum() > 0:
            delta_E = torch.sign(counts_E.mean() - counts_E) * rate
            # Centred, so the biases stay around zero (only their differences matter).
            r.expert_bias.add_(delta_E - delta_E.mean())
        r.tokens_per_expert.zero_()
    return counts_LE, torch.stack([r.expert_bias for r in rs]).clone()
