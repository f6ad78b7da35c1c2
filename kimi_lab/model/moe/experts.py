"""Routed experts behind one interface, and the pure-PyTorch dropless backend.

Shape legend: T tokens, D hidden, E experts, F expert FFN width, K experts per
token, S = T*K token-expert pairs.

Every backend owns the same canonical weights (so checkpoints move between them):
``w1`` (E, F, D) gate, ``w3`` (E, F, D) up, ``w2`` (E, F, D) down, applied per
expert e as ``y = (silu(x @ w1[e].T) * (x @ w3[e].T)) @ w2[e]``. (w2 is stored
F-major, as MegaBlocks stores it, so its adapter needs no transposes.)

The torch backend is dropless: tokens are sorted by expert and each expert
multiplies exactly the rows it received (one grouped GEMM for all experts), so no
token is ever dropped and there is no capacity factor. Its backward computes each
weight's gradient for all experts at once, in one (E, F, D) tensor; indexing
``w[e]`` under autograd instead would allocate a full-size zero gradient per expert.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kimi_lab.model.moe.dispatch import ExpertShard, expert_parallel_forward


class Experts(nn.Module):
    """Interface: ``forward(x_TD, top_idx_TK, top_weight_TK) -> y_TD``."""

    n_experts: int  # all experts of the layer, also when this rank holds only some
    dim: int
    ffn_dim: int
    backend_name: str = "abstract"
    shard: ExpertShard | None = None  # set by shard_: this rank's experts under expert parallelism

    def shard_(self, shard: ExpertShard) -> None:
        """Keep only the experts ``shard`` assigns to this rank; route tokens to their owners."""
        raise NotImplementedError(f"the {self.backend_name} experts backend has no expert parallelism")

    def forward(
        self, x_TD: torch.Tensor, top_idx_TK: torch.Tensor, top_weight_TK: torch.Tensor
    ) -> torch.Tensor:
        raise NotImplementedError


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype autocast would give a matmul here (bf16 under bf16-mixed), else x's."""
    device_type = x.device.type
    if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return x.dtype


def _grouped_ok(x: torch.Tensor, *dims: int) -> bool:
    """Whether ``torch._grouped_mm`` takes these operands: its kernels need 16-byte aligned strides."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    if x.device.type == "cuda":
        ok_dtype = x.dtype == torch.bfloat16
    elif x.device.type == "cpu":
        ok_dtype = x.dtype in (torch.bfloat16, torch.float32)
    else:
        return False
    per = 16 // x.element_size()
    return ok_dtype and all(d % per == 0 for d in dims)


def _use_grouped(x: torch.Tensor, *dims: int) -> bool:
    """Grouped GEMM where it pays: not for fp32 on CPU, where the per-expert loop of MKL matmuls
    is as fast at a few experts and faster at hundreds (measured: 8.2 s vs 12.4 s for 384 groups)."""
    return _grouped_ok(x, *dims) and not (x.device.type == "cpu" and x.dtype == torch.float32)


def _mm_groups(
    a_SX: torch.Tensor, w_EXY: torch.Tensor, counts: list[int], offs: torch.Tensor | None
) -> torch.Tensor:
    """out[rows of e] = a[rows of e] @ w[e] for consecutive row groups of sizes ``counts``."""
    if offs is not None:
        return torch._grouped_mm(a_SX, w_EXY, offs=offs)
    out = a_SX.new_empty(a_SX.shape[0], w_EXY.shape[-1])
    start = 0
    for e, n in enumerate(counts):
        if n:
            torch.mm(a_SX[start : start + n], w_EXY[e], out=out[start : start + n])
            start += n
    return out


def _mm_weight_grads(
    a_SX: torch.Tensor, b_SY: torch.Tensor, counts: list[int], offs: torch.Tensor | None
) -> torch.Tensor:
    """out[e] = a[rows of e]^T @ b[rows of e]: (E, X, Y); zero for experts with no rows."""
    if offs is not None:
        out = torch._grouped_mm(a_SX.t(), b_SY, offs=offs)
    else:
        out = a_SX.new_empty(len(counts), a_SX.shape[1], b_SY.shape[1])
        start = 0
        for e, n in enumerate(counts):
            if n:
                torch.mm(a_SX[start : start + n].t(), b_SY[start : start + n], out=out[e])
                start += n
    for e, n in enumerate(counts):
        if not n:
            out[e].zero_()
    return out


def fused_gate_up(w1: torch.Tensor, w3: torch.Tensor) -> torch.Tensor | None:
    """``w1`` and ``w3`` as one (E, 2F, D) tensor without a copy, when they are the two halves
    of one storage (``TorchExperts`` keeps them so); else None."""
    if type(w1) not in (torch.Tensor, nn.Parameter) or type(w3) not in (torch.Tensor, nn.Parameter):
        return None  # tensor subclasses (DTensor, fakes) have no storage to share
    E, F_, D = w1.shape
    if (
        w1.dtype != w3.dtype
        or w1.device != w3.device
        or w1.stride() != (2 * F_ * D, D, 1)
        or w3.stride() != w1.stride()
        or w3.storage_offset() != w1.storage_offset() + F_ * D
        or w1.untyped_storage().data_ptr() != w3.untyped_storage().data_ptr()
    ):
        return None
    return w1.as_strided((E, 2 * F_, D), (2 * F_ * D, D, 1))


class _GroupedSwiGLU(torch.autograd.Function):
    """SwiGLU of expert-sorted rows; weights enter whole, gradients leave whole.

    All experts' matmuls run as one grouped GEMM (``torch._grouped_mm``) when the
    shapes allow, else as a loop of per-expert matmuls writing into shared buffers.
    Gate and up run as one (E, 2F, D) operand, read in place from the fused storage
    (a copy only when the weights are not stored fused, or need a cast); their
    gradients are written as two contiguous (E, F, D) tensors, which autograd
    keeps as they are. So in fp32 no step touches the weights beyond the matmuls.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, x_SD: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor, w2: torch.Tensor, counts: list[int]
    ) -> torch.Tensor:
        dtype = _compute_dtype(x_SD)
        E, F_, D = w1.shape
        x_SD = x_SD.to(dtype).contiguous()
        w13_E2FD = fused_gate_up(w1, w3)
        if w13_E2FD is not None:
            w13_E2FD = w13_E2FD.to(dtype)  # no-op in fp32; one cast (read once) under autocast
        else:
            w13_E2FD = w1.new_empty((E, 2 * F_, D), dtype=dtype)
            w13_E2FD[:, :F_].copy_(w1)
            w13_E2FD[:, F_:].copy_(w3)
        w2_EFD = w2.to(dtype)
        offs = None
        if x_SD.shape[0] > 0 and _use_grouped(x_SD, D, F_):
            offs = torch.tensor(counts, device=x_SD.device).cumsum(0).to(torch.int32)
        h_S2F = _mm_groups(x_SD, w13_E2FD.transpose(1, 2), counts, offs)
        a_SF = F.silu(h_S2F[:, :F_]).mul_(h_S2F[:, F_:])
        y_SD = _mm_groups(a_SF, w2_EFD, counts, offs)
        ctx.save_for_backward(
            x_SD, w13_E2FD, w2_EFD, h_S2F, a_SF, offs if offs is not None else torch.empty(0)
        )
        ctx.grouped = offs is not None
        ctx.counts = counts
        ctx.param_dtype = w1.dtype
        return y_SD

    @staticmethod
    def backward(ctx, gy_SD: torch.Tensor):  # type: ignore[override]
        x_SD, w13_E2FD, w2_EFD, h_S2F, a_SF, offs = ctx.saved_tensors
        offs = offs if ctx.grouped else None
        counts: list[int] = ctx.counts
        F_ = w2_EFD.shape[1]
        gy_SD = gy_SD.to(x_SD.dtype).contiguous()
        gate, up = h_S2F[:, :F_], h_S2F[:, F_:]
        ga_SF = _mm_groups(gy_SD, w2_EFD.transpose(1, 2), counts, offs)
        gh_S2F = torch.empty_like(h_S2F)
        # a = silu(gate) * up:  d/d up = silu(gate);  d/d gate = up * silu'(gate)
        torch.mul(ga_SF, F.silu(gate), out=gh_S2F[:, F_:])
        gh_S2F[:, :F_] = torch.ops.aten.silu_backward(ga_SF.mul_(up), gate)
        dt = ctx.param_dtype
        gw2 = _mm_weight_grads(a_SF, gy_SD, counts, offs).to(dt)
        gw1 = _mm_weight_grads(gh_S2F[:, :F_], x_SD, counts, offs).to(dt)
        gw3 = _mm_weight_grads(gh_S2F[:, F_:], x_SD, counts, offs).to(dt)
        gx_SD = _mm_groups(gh_S2F, w13_E2FD, counts, offs)
        return gx_SD, gw1, gw3, gw2, None


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


def expert_layout(
    top_idx_TK: torch.Tensor, n_experts: int, pad: bool
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Where each token-expert pair goes in the expert-sorted (optionally padded) row buffer.

    Returns ``(token_of_row_P, row_of_pair_S, rows_per_expert)``: row r of the buffer
    holds token ``token_of_row_P[r]``; pair s (in ``top_idx_TK.reshape(-1)`` order) is
    row ``row_of_pair_S[s]``. Padding rows repeat token 0: their outputs are never
    read, so their gradients are exactly zero and they change no weight gradient.
    """
    order_S, token_S, counts = sort_by_expert(top_idx_TK, n_experts)
    if not pad:
        rows = counts
        row_sorted_S = torch.arange(order_S.numel(), device=order_S.device)
    else:
        rows = [bucket_rows(n) for n in counts]
        dev = order_S.device
        real_start_E = torch.tensor(counts, device=dev).cumsum(0) - torch.tensor(counts, device=dev)
        pad_start_E = torch.tensor(rows, device=dev).cumsum(0) - torch.tensor(rows, device=dev)
        expert_sorted_S = top_idx_TK.reshape(-1)[order_S]
        # row = (padded start of its expert) + (rank among that expert's pairs)
        row_sorted_S = (
            torch.arange(order_S.numel(), device=dev) + (pad_start_E - real_start_E)[expert_sorted_S]
        )
    token_of_row_P = torch.zeros(sum(rows), dtype=torch.long, device=order_S.device)
    token_of_row_P[row_sorted_S] = token_S
    row_of_pair_S = torch.empty_like(order_S)
    row_of_pair_S[order_S] = row_sorted_S
    return token_of_row_P, row_of_pair_S, rows


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
        """Give w1 and w3 storages of their own (FSDP2 shards only contiguous parameters);
        the forward then builds the fused operand each step, as for any unfused weights."""
        self.fuse = False
        self.w1.data, self.w3.data = self.w1.data.contiguous(), self.w3.data.contiguous()

    def _apply(self, fn: Any, recurse: bool = True) -> TorchExperts:
        # .to() / .float() give each parameter its own new storage: fuse again.
        super()._apply(fn, recurse)
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

    def _pairs(self, x_TD: torch.Tensor, top_idx_TK: torch.Tensor, n_experts: int) -> torch.Tensor:
        """(T, K, D): the output of expert ``top_idx_TK[t, k]`` (of this module's local experts) for token t."""
        T, D = x_TD.shape
        token_P, row_of_pair_S, rows = expert_layout(top_idx_TK, n_experts, _pads_rows(x_TD, x_TD.dtype))
        x_PD = x_TD.index_select(0, token_P)
        w1, w3, w2 = (_local(w) for w in (self.w1, self.w3, self.w2))
        y_PD = _GroupedSwiGLU.apply(x_PD, w1, w3, w2, rows)
        # Back to pair order; padding rows are dropped here, so they get zero gradient.
        return y_PD.index_select(0, row_of_pair_S).view(T, top_idx_TK.shape[1], D)

    def forward(
        self, x_TD: torch.Tensor, top_idx_TK: torch.Tensor, top_weight_TK: torch.Tensor
    ) -> torch.Tensor:
        T, D = x_TD.shape
        # Cast before gathering: the K copies of each token are then made in the compute dtype.
        x_TD = x_TD.to(_compute_dtype(x_TD))
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
