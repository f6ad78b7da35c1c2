"""Routed experts behind one interface, and the pure-PyTorch dropless backend.

Shape legend: T tokens, D hidden, E experts, F expert FFN width, K experts per
token, S = T*K token-expert pairs, P rows of the expert-sorted buffer (S plus padding).

Every backend owns the same canonical weights (so checkpoints move between them):
``w1`` (E, F, D) gate, ``w3`` (E, F, D) up, ``w2`` (E, F, D) down, applied per
expert e as ``y = (silu(x @ w1[e].T) * (x @ w3[e].T)) @ w2[e]``. (w2 is stored
F-major, as MegaBlocks stores it, so its adapter needs no transposes.)

The torch backend is dropless: token-expert pairs are sorted by expert into one row
buffer and every pair is multiplied, so no token is ever dropped and there is no
capacity factor. Padding rows (zero) only ever fill an expert's block up to a size
that runs faster: a few bucketed sizes for bf16 on CPU, or one shared capacity when
all experts run as one batched matmul (``expert_path`` chooses per call). The
matmuls themselves, and why weight gradients leave whole, are ``expert_matmuls``;
under bf16 autocast the weights' bf16 copy is ``compute_copy``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kimi_lab.model.moe.compute_copy import ComputeCopy
from kimi_lab.model.moe.dispatch import ExpertShard, expert_parallel_forward
from kimi_lab.model.moe.expert_matmuls import (
    ExpertSwiGLU,
    RowPlan,
    compute_dtype,
    fused_gate_up,
    use_grouped,
)
from kimi_lab.model.moe.expert_path import batched_capacity

# TorchExperts.path: "auto" measures which form wins per call (expert_path); the others force one.
EXPERT_PATHS = ("auto", "batched", "ragged")


class Experts(nn.Module):
    """Interface: ``forward(x_TD, top_idx_TK, top_weight_TK) -> y_TD``."""

    n_experts: int  # all experts of the layer, also when this rank holds only some
    dim: int
    ffn_dim: int
    backend_name: str = "abstract"
    shard: ExpertShard | None = None  # set by shard_: this rank's experts under expert parallelism
    last_form: str | None = None  # the matmul form the last forward ran (backends with several)

    def shard_(self, shard: ExpertShard) -> None:
        """Keep only the experts ``shard`` assigns to this rank; route tokens to their owners."""
        raise NotImplementedError(f"the {self.backend_name} experts backend has no expert parallelism")

    def forward(
        self, x_TD: torch.Tensor, top_idx_TK: torch.Tensor, top_weight_TK: torch.Tensor
    ) -> torch.Tensor:
        raise NotImplementedError


def sort_by_expert(top_idx_TK: torch.Tensor, n_experts: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """(order_S, token_of_S, counts): the token-expert pairs grouped by expert."""
    flat_S = top_idx_TK.reshape(-1)
    order_S = torch.argsort(flat_S, stable=True)
    counts = torch.bincount(flat_S, minlength=n_experts).tolist()
    return order_S, order_S // top_idx_TK.shape[1], counts


def bucket_rows(n: int) -> int:
    """n rounded up to one of a few sizes per power of two (at most 1/8 more rows, at least 16)."""
    if n == 0:
        return 0
    step = max(16, 1 << max(0, n.bit_length() - 4))
    return -(-n // step) * step


def _pads_rows(x: torch.Tensor, dtype: torch.dtype) -> bool:
    # oneDNN builds (and caches, without bound by default) one kernel per matmul shape:
    # with a new row count per expert every step, bf16 CPU matmuls spend their time
    # building kernels and the cache grows the process by tens of MB a step. A small
    # fixed set of row counts keeps every kernel cached. On CUDA, bf16 runs ``torch._grouped_mm``
    # (torch >= 2.8, no MegaBlocks needed), whose groups then start at 16-row boundaries, as
    # torchtitan aligns its token groups.
    return x.device.type in ("cpu", "cuda") and dtype == torch.bfloat16


def place_rows(
    top_idx_TK: torch.Tensor,
    order_S: torch.Tensor,
    token_S: torch.Tensor,
    counts: list[int],
    plan: RowPlan,
    pad_token: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each token-expert pair goes in the row buffer ``plan`` lays out.

    Expert e's first ``plan.rows[e]`` pairs fill its block (padded up to ``rows[e]``), the
    rest (batched form: ``plan.overflow[e]`` of them) follow all blocks. Returns
    ``(token_of_row_P, row_of_pair_S)``: row r of the buffer holds token
    ``token_of_row_P[r]``; pair s (in ``top_idx_TK.reshape(-1)`` order) is row
    ``row_of_pair_S[s]``. Padding rows hold ``pad_token`` (the caller's zero row after
    the tokens): their outputs are zero and never read, so they change no gradient.
    """
    dev = order_S.device
    rows, overflow = list(plan.rows), list(plan.overflow)
    if rows == counts and not overflow:
        row_sorted_S = torch.arange(order_S.numel(), device=dev)
    else:
        counts_E, rows_E = torch.tensor(counts, device=dev), torch.tensor(rows, device=dev)
        expert_sorted_S = top_idx_TK.reshape(-1)[order_S]
        rank_S = torch.arange(order_S.numel(), device=dev) - (counts_E.cumsum(0) - counts_E)[expert_sorted_S]
        row_sorted_S = (rows_E.cumsum(0) - rows_E)[expert_sorted_S] + rank_S  # block start + rank
        if overflow:
            over_E = torch.tensor(overflow, device=dev)
            over_start_E = sum(rows) + over_E.cumsum(0) - over_E
            beyond_S = rank_S - rows_E[expert_sorted_S]
            row_sorted_S = torch.where(beyond_S < 0, row_sorted_S, over_start_E[expert_sorted_S] + beyond_S)
    token_of_row_P = torch.full((sum(rows) + sum(overflow),), pad_token, dtype=torch.long, device=dev)
    token_of_row_P[row_sorted_S] = token_S
    row_of_pair_S = torch.empty_like(order_S)
    row_of_pair_S[order_S] = row_sorted_S
    return token_of_row_P, row_of_pair_S


class TorchExperts(Experts):
    """Dropless grouped experts in plain PyTorch (CPU and GPU); expert-parallel once ``shard_`` is called."""

    backend_name = "torch"

    def __init__(self, n_experts: int, dim: int, ffn_dim: int, init_std: float = 0.02) -> None:
        super().__init__()
        self.n_experts, self.dim, self.ffn_dim = n_experts, dim, ffn_dim
        self.w1 = nn.Parameter(torch.empty(n_experts, ffn_dim, dim))
        self.w3 = nn.Parameter(torch.empty(n_experts, ffn_dim, dim))
        self.w2 = nn.Parameter(torch.empty(n_experts, ffn_dim, dim))
        self.init_std = init_std
        self.shard: ExpertShard | None = None
        self.fuse = True
        self.path = "auto"  # one of EXPERT_PATHS
        # Under bf16 autocast: the weights' bf16 copy, recast only when the fp32 masters change.
        self.keep_compute_copy = True
        self.compute_copy = ComputeCopy()
        self.reset_parameters()
        self._fuse_gate_up()

    def reset_parameters(self) -> None:
        for w in (self.w1, self.w3, self.w2):
            nn.init.normal_(w, std=self.init_std)

    def _fuse_gate_up(self) -> None:
        """Keep w1 and w3 as the two halves of one (E, 2F, D) storage, so the gate-up matmul
        reads them in place (no per-step copy). The parameters, their names and shapes, and the
        checkpoint layout stay the canonical ones; only where their elements live changes."""
        if not self.fuse or fused_gate_up(self.w1, self.w3) is not None or self.w1.device.type == "meta":
            return
        if type(self.w1) is not nn.Parameter or type(self.w3) is not nn.Parameter:
            return  # sharded (DTensor) parameters live where their owner put them
        E, F_, D = self.w1.shape
        w13 = torch.empty((E, 2 * F_, D), dtype=self.w1.dtype, device=self.w1.device)
        w13[:, :F_].copy_(self.w1.detach())
        w13[:, F_:].copy_(self.w3.detach())
        self.w1.data, self.w3.data = w13[:, :F_], w13[:, F_:]

    def unfuse_(self) -> None:
        """Hand the weights to a sharding wrapper (FSDP2): w1 and w3 get storages of their own
        (FSDP2 shards only contiguous parameters), and no bf16 copy is kept (the wrapper gathers
        full weights for each forward and frees them after; a copy kept here would undo the
        sharding). The forward then builds the fused operand each step."""
        self.fuse = False
        self.keep_compute_copy = False
        self.compute_copy.clear()
        self.w1.data, self.w3.data = self.w1.data.contiguous(), self.w3.data.contiguous()

    def _apply(self, fn: Any, recurse: bool = True) -> TorchExperts:
        # .to() / .float() give each parameter its own new storage: fuse again.
        super()._apply(fn, recurse)
        self.compute_copy.clear()
        if isinstance(self.w1, nn.Parameter) and isinstance(self.w3, nn.Parameter):
            self._fuse_gate_up()
        return self

    def shard_(self, shard: ExpertShard) -> None:
        """Keep only this rank's experts (whole); tokens for the others travel to their owners."""
        lo, n = shard.first, shard.n_local
        for name in ("w1", "w3", "w2"):
            w = getattr(self, name)
            setattr(self, name, nn.Parameter(w.detach()[lo : lo + n].clone(), requires_grad=w.requires_grad))
        self.shard = shard
        self._fuse_gate_up()

    def _plan(self, x_TD: torch.Tensor, counts: list[int]) -> RowPlan:
        """The rows every expert gets and the matmul form, for these counts (x in the compute dtype)."""
        if self.path not in EXPERT_PATHS:
            raise ValueError(f"TorchExperts.path {self.path!r}: one of {EXPERT_PATHS}")
        ragged = [bucket_rows(n) for n in counts] if _pads_rows(x_TD, x_TD.dtype) else counts
        ragged_form = "grouped" if sum(counts) and use_grouped(x_TD, self.dim, self.ffn_dim) else "loop"
        # block capacities: the bucketed sizes (a few kernel shapes) the counts fall in
        candidates = sorted({bucket_rows(n) for n in counts if n})
        if self.path == "auto":
            capacity = batched_capacity(
                counts,
                sum(ragged),
                candidates,
                device=x_TD.device,
                dtype=x_TD.dtype,
                dim=self.dim,
                ffn=self.ffn_dim,
                ragged_form=ragged_form,
                backward=torch.is_grad_enabled(),
            )
        else:  # forced: a block that holds every pair
            capacity = max(candidates, default=0) if self.path == "batched" else 0
        if capacity:
            over = [max(n - capacity, 0) for n in counts]
            return RowPlan.make("batched", [capacity] * len(counts), x_TD.device, over)
        return RowPlan.make(ragged_form, ragged, x_TD.device)

    def compute_weights(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(w13_E2FD, w2_EFD)`` in ``dtype`` from the kept copy; None where none is kept."""
        if not self.keep_compute_copy or dtype == self.w1.dtype:
            return None  # fp32 runs, and weights a sharding wrapper owns, are read as they are
        return self.compute_copy.get(self.w1, self.w3, self.w2, dtype)

    def _pairs(self, x_TD: torch.Tensor, top_idx_TK: torch.Tensor, n_experts: int) -> torch.Tensor:
        """(T, K, D): the output of expert ``top_idx_TK[t, k]`` (of this module's local experts) for token t."""
        T, D = x_TD.shape
        order_S, token_S, counts = sort_by_expert(top_idx_TK, n_experts)
        plan = self._plan(x_TD, counts)
        self.last_form = plan.form
        token_P, row_of_pair_S = place_rows(top_idx_TK, order_S, token_S, counts, plan, T)
        if len(token_P) > len(order_S):  # padding rows read a zero row after the tokens
            x_TD = torch.cat([x_TD, x_TD.new_zeros(1, D)])
        x_PD = x_TD.index_select(0, token_P)
        w1, w3, w2 = (_local(w) for w in (self.w1, self.w3, self.w2))
        y_PD = ExpertSwiGLU.apply(x_PD, w1, w3, w2, plan, self.compute_weights(x_PD.dtype))
        # Back to pair order; padding rows are dropped here, so they get zero gradient.
        return y_PD.index_select(0, row_of_pair_S).view(T, top_idx_TK.shape[1], D)

    def forward(
        self, x_TD: torch.Tensor, top_idx_TK: torch.Tensor, top_weight_TK: torch.Tensor
    ) -> torch.Tensor:
        T, D = x_TD.shape
        # Cast before gathering: the K copies of each token are then made in the compute dtype.
        x_TD = x_TD.to(compute_dtype(x_TD))
        if self.shard is None:
            y_TKD = self._pairs(x_TD, top_idx_TK, self.n_experts)
        else:
            n_local = self.shard.n_local
            y_TKD = expert_parallel_forward(
                x_TD,
                top_idx_TK,
                self.shard,
                lambda x_RD, e_R: self._pairs(x_RD, e_R.unsqueeze(1), n_local).view(-1, D),
            )
        # Each token's gate-weighted sum of its K outputs as one small matmul,
        # which accumulates in fp32 even for bf16 inputs.
        out_T1D = torch.bmm(top_weight_TK.to(y_TKD.dtype).unsqueeze(1), y_TKD)
        return out_T1D.view(T, D)


def _local(w: torch.Tensor) -> torch.Tensor:
    """This rank's experts of a weight: the local part of a DTensor split over the expert-parallel
    ranks (FSDP2 x EP, ``kimi_lab.parallel.fsdp``), else the weight itself."""
    to_local = getattr(w, "to_local", None)
    return w if to_local is None else to_local()


def reference_experts(
    experts: Experts, x_TD: torch.Tensor, top_idx_TK: torch.Tensor, top_weight_TK: torch.Tensor
) -> torch.Tensor:
    """The plain per-token loop the backends must equal (tests and documentation)."""
    w1, w3, w2 = experts.w1, experts.w3, experts.w2
    rows = []
    for t in range(x_TD.shape[0]):
        acc = torch.zeros_like(x_TD[t])
        for k in range(top_idx_TK.shape[1]):
            e = int(top_idx_TK[t, k])
            h = F.silu(w1[e] @ x_TD[t]) * (w3[e] @ x_TD[t])
            acc = acc + top_weight_TK[t, k] * (h @ w2[e])
        rows.append(acc)
    return torch.stack(rows) if rows else torch.zeros_like(x_TD)
