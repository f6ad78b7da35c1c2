"""Expert parallelism: token-expert pairs travel to the rank that owns their expert and back.

Shape legend: T tokens, D hidden, E experts in all, E_l = E / EP experts per rank,
K experts per token, S = T*K token-expert pairs on this rank, R pairs this rank
received for its own experts.

Rank ``r`` of the expert-parallel group owns experts ``[r*E_l, (r+1)*E_l)`` whole.
A forward pass (dropless: every pair travels, whatever the load):

1. sort this rank's pairs by expert id, so they are grouped by destination rank;
2. exchange per-expert counts (one small all-to-all), so every rank knows how many
   rows it receives from each source for each of its experts (variable splits);
3. all-to-all the rows; group what arrived by local expert and run the experts;
4. all-to-all the outputs back along the reversed splits; undo the sort.

The all-to-alls are autograd functions whose backward is the reverse exchange, so
input gradients return to their tokens and each expert's weight gradient sums the
contributions of every rank's tokens. Works on gloo (CPU) and NCCL (GPU).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.profiler import record_function

# The profiler label of every exchange (``kimi-lab bench ep`` sums its time).
ALL_TO_ALL = "expert_parallel/all_to_all"


@dataclass(frozen=True)
class ExpertShard:
    """Which experts this rank owns, and the group it exchanges tokens with."""

    group: Any  # a torch.distributed ProcessGroup
    rank: int  # this rank's index in ``group``
    size: int  # ranks in ``group`` (EP)
    n_experts: int  # E, all experts of the layer

    @property
    def n_local(self) -> int:
        return self.n_experts // self.size

    @property
    def first(self) -> int:
        return self.rank * self.n_local


class _AllToAll(torch.autograd.Function):
    """Rows of ``x`` to the group's ranks by ``in_splits``, received by ``out_splits``; backward reverses."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: torch.Tensor, out_splits: list[int], in_splits: list[int], group: Any
    ) -> torch.Tensor:
        ctx.out_splits, ctx.in_splits, ctx.group = out_splits, in_splits, group
        out = x.new_empty((sum(out_splits), *x.shape[1:]))
        with record_function(ALL_TO_ALL):
            dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:  # type: ignore[override]
        gx = g.new_empty((sum(ctx.in_splits), *g.shape[1:]))
        with record_function(ALL_TO_ALL):
            dist.all_to_all_single(gx, g.contiguous(), ctx.in_splits, ctx.out_splits, group=ctx.group)
        return gx, None, None, None


def all_to_all(x: torch.Tensor, out_splits: list[int], in_splits: list[int], group: Any) -> torch.Tensor:
    return _AllToAll.apply(x, out_splits, in_splits, group)


# (rows, local expert id of each row) -> rows out, for one rank's own experts
LocalExperts = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def expert_parallel_forward(
    x_TD: torch.Tensor, top_idx_TK: torch.Tensor, shard: ExpertShard, local_experts: LocalExperts
) -> torch.Tensor:
    """Each pair's expert output, (T, K, D) in ``top_idx_TK`` order, computed on the owning rank.

    ``local_experts(x_RD, local_expert_R)`` runs this rank's experts on the rows it
    received (``local_expert_R`` in ``[0, E_l)``, rows from each source in order).
    """
    T, K = top_idx_TK.shape
    E, EP, E_l = shard.n_experts, shard.size, shard.n_local
    flat_S = top_idx_TK.reshape(-1)
    order_S = torch.argsort(flat_S, stable=True)  # pairs grouped by expert, hence by destination rank
    send_E = torch.bincount(flat_S, minlength=E)
    # recv[src, j]: rows rank ``src`` sends for my local expert j.
    recv_flat = torch.empty_like(send_E)
    with record_function(ALL_TO_ALL):
        dist.all_to_all_single(recv_flat, send_E, group=shard.group)
    send_R_E = send_E.view(EP, E_l)
    recv_R_E = recv_flat.view(EP, E_l)
    in_splits = send_R_E.sum(1).tolist()
    out_splits = recv_R_E.sum(1).tolist()

    x_SD = x_TD.index_select(0, order_S // K)
    x_RD = all_to_all(x_SD, out_splits, in_splits, shard.group)
    local_expert_R = torch.repeat_interleave(
        torch.arange(E_l, device=x_TD.device).repeat(EP), recv_R_E.reshape(-1).to(x_TD.device)
    )
    y_RD = local_experts(x_RD, local_expert_R)
    y_SD = all_to_all(y_RD, in_splits, out_splits, shard.group)
    # Undo the sort: pair order_S[s] is row s.
    pos_S = torch.empty_like(order_S)
    pos_S[order_S] = torch.arange(order_S.numel(), device=order_S.device)
    return y_SD.index_select(0, pos_S).view(T, K, y_SD.shape[-1])
