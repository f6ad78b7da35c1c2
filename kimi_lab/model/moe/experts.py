"""Routed experts behind one interface, and the pure-PyTorch dropless backend.

Shape legend: T tokens, D hidden, E experts, F expert FFN width, K experts per
token, S = T*K token-expert pairs.

Every backend owns the same canonical weights (so checkpoints move between them):
``w1`` (E, F, D) gate, ``w3`` (E, F, D) up, ``w2`` (E, F, D) down, applied per
expert e as ``y = (silu(x @ w1[e].T) * (x @ w3[e].T)) @ w2[e]``. (w2 is stored
F-major, as MegaBlocks stores it, so its adapter needs no transposes.)

The torch backend is dropless: tokens are sorted by expert and each expert
multiplies exactly the rows it received, so no token is ever dropped and there
is no capacity factor. Its backward writes each expert's weight gradient into
one preallocated (E, F, D) tensor; indexing ``w[e]`` under autograd instead would
allocate a full-size zero gradient per expert.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Experts(nn.Module):
    """Interface: ``forward(x_TD, top_idx_TK, top_weight_TK) -> y_TD``."""

    n_experts: int
    dim: int
    ffn_dim: int
    backend_name: str = "abstract"

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


def _grouped_mm(
    a_SX: torch.Tensor, w_EXY: torch.Tensor, counts: list[int], out_SY: torch.Tensor
) -> torch.Tensor:
    """out[rows of e] = a[rows of e] @ w[e], for consecutive row groups of sizes ``counts``."""
    start = 0
    for e, n in enumerate(counts):
        if n:
            torch.mm(a_SX[start : start + n], w_EXY[e], out=out_SY[start : start + n])
            start += n
    return out_SY


class _GroupedSwiGLU(torch.autograd.Function):
    """SwiGLU of expert-sorted rows; weights enter whole, gradients leave whole."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, x_SD: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor, w2: torch.Tensor, counts: list[int]
    ) -> torch.Tensor:
        dtype = _compute_dtype(x_SD)
        F_ = w1.shape[1]
        x_SD = x_SD.to(dtype)
        # Gate and up fused into one (E, D, 2F) operand: one matmul per expert.
        w13_ED2F = torch.cat((w1.to(dtype), w3.to(dtype)), dim=1).transpose(1, 2)
        w2_EFD = w2.to(dtype)
        S = x_SD.shape[0]
        h_S2F = _grouped_mm(x_SD, w13_ED2F, counts, x_SD.new_empty(S, 2 * F_))
        a_SF = F.silu(h_S2F[:, :F_]).mul_(h_S2F[:, F_:])
        y_SD = _grouped_mm(a_SF, w2_EFD, counts, x_SD.new_empty(S, w2.shape[2]))
        ctx.save_for_backward(x_SD, w13_ED2F, w2_EFD, h_S2F, a_SF)
        ctx.counts = counts
        ctx.param_dtype = w1.dtype
        return y_SD

    @staticmethod
    def backward(ctx, gy_SD: torch.Tensor):  # type: ignore[override]
        x_SD, w13_ED2F, w2_EFD, h_S2F, a_SF = ctx.saved_tensors
        counts: list[int] = ctx.counts
        E, F_, D = w2_EFD.shape
        S = x_SD.shape[0]
        gy_SD = gy_SD.to(x_SD.dtype).contiguous()

        gate, up = h_S2F[:, :F_], h_S2F[:, F_:]
        ga_SF = _grouped_mm(gy_SD, w2_EFD.transpose(1, 2), counts, x_SD.new_empty(S, F_))
        gh_S2F = x_SD.new_empty(S, 2 * F_)
        # a = silu(gate) * up:  d/d up = silu(gate);  d/d gate = up * silu'(gate)
        torch.mul(ga_SF, F.silu(gate), out=gh_S2F[:, F_:])
        gh_S2F[:, :F_] = torch.ops.aten.silu_backward(ga_SF.mul_(up), gate)

        gw1 = x_SD.new_zeros(E, F_, D)
        gw3 = x_SD.new_zeros(E, F_, D)
        gw2 = x_SD.new_zeros(E, F_, D)
        start = 0
        for e, n in enumerate(counts):
            if n:
                rows = slice(start, start + n)
                torch.mm(a_SF[rows].t(), gy_SD[rows], out=gw2[e])
                torch.mm(gh_S2F[rows, :F_].t(), x_SD[rows], out=gw1[e])
                torch.mm(gh_S2F[rows, F_:].t(), x_SD[rows], out=gw3[e])
                start += n
        gx_SD = _grouped_mm(gh_S2F, w13_ED2F.transpose(1, 2), counts, x_SD.new_empty(S, D))
        dt = ctx.param_dtype
        return gx_SD, gw1.to(dt), gw3.to(dt), gw2.to(dt), None


def sort_by_expert(top_idx_TK: torch.Tensor, n_experts: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """(order_S, token_of_S, counts): the token-expert pairs grouped by expert."""
    flat_S = top_idx_TK.reshape(-1)
    order_S = torch.argsort(flat_S, stable=True)
    counts = torch.bincount(flat_S, minlength=n_experts).tolist()
    return order_S, order_S // top_idx_TK.shape[1], counts


class TorchExperts(Experts):
    """Dropless grouped experts in plain PyTorch (CPU and GPU)."""

    backend_name = "torch"

    def __init__(self, n_experts: int, dim: int, ffn_dim: int, init_std: float = 0.02) -> None:
        super().__init__()
        self.n_experts, self.dim, self.ffn_dim = n_experts, dim, ffn_dim
        self.w1 = nn.Parameter(torch.empty(n_experts, ffn_dim, dim))
        self.w3 = nn.Parameter(torch.empty(n_experts, ffn_dim, dim))
        self.w2 = nn.Parameter(torch.empty(n_experts, ffn_dim, dim))
        self.init_std = init_std
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for w in (self.w1, self.w3, self.w2):
            nn.init.normal_(w, std=self.init_std)

    def forward(
        self, x_TD: torch.Tensor, top_idx_TK: torch.Tensor, top_weight_TK: torch.Tensor
    ) -> torch.Tensor:
        T, D = x_TD.shape
        K = top_idx_TK.shape[1]
        order_S, token_S, counts = sort_by_expert(top_idx_TK, self.n_experts)
        # Cast before gathering: the K copies of each token are then made in the compute dtype.
        x_SD = x_TD.to(_compute_dtype(x_TD)).index_select(0, token_S)
        y_SD = _GroupedSwiGLU.apply(x_SD, self.w1, self.w3, self.w2, counts)
        # Back to token order (a permutation, so its backward is exact), then each
        # token's gate-weighted sum of its K outputs as one small matmul, which
        # accumulates in fp32 even for bf16 inputs.
        y_TKD = y_SD.index_select(0, torch.argsort(order_S)).view(T, K, D)
        out_T1D = torch.bmm(top_weight_TK.to(y_SD.dtype).unsqueeze(1), y_TKD)
        return out_T1D.view(T, D)


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
