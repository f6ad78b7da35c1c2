"""The routed experts' SwiGLU over expert-sorted rows, as a ragged loop, a grouped GEMM or one bmm.

Shape legend: D hidden, E experts, F expert FFN width, P rows of the expert-sorted
buffer (expert e owns ``rows[e]`` consecutive rows; rows beyond the pairs it received
are zero padding), C rows per expert when all experts own the same number.

Three forms of the same arithmetic (``RowPlan.form``):

- ``loop``: one matmul per expert that owns rows (any device, dtype, shape);
- ``grouped``: one ``torch._grouped_mm`` over the ragged groups (CUDA bf16, CPU bf16/fp32,
  16-byte aligned widths); on CPU it is a loop inside the kernel;
- ``batched``: every expert owns the same C rows (padded) in one block, and each matmul
  is one ``torch.bmm`` over (E, C, .) — one call whatever E is. An expert that received
  more than C pairs puts the rest in an overflow region after the block (``overflow[e]``
  rows each, no padding), multiplied per expert: a few hot experts then cost a few small
  matmuls instead of padding every expert up to the hottest. ``expert_path`` chooses C.

Weights enter whole and their gradients leave whole, one (E, F, D) tensor each: indexing
``w[e]`` under autograd would allocate a full-size zero gradient per expert.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

FORMS = ("batched", "grouped", "loop")


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype autocast would give a matmul here (bf16 under bf16-mixed), else x's."""
    device_type = x.device.type
    if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return x.dtype


def grouped_ok(x: torch.Tensor, *dims: int) -> bool:
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


def use_grouped(x: torch.Tensor, *dims: int) -> bool:
    """Grouped GEMM where it pays: not for fp32 on CPU, where the per-expert loop of MKL matmuls
    is as fast at a few experts and faster at hundreds (measured: 8.2 s vs 12.4 s for 384 groups)."""
    return grouped_ok(x, *dims) and not (x.device.type == "cpu" and x.dtype == torch.float32)


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


@dataclass(frozen=True)
class RowPlan:
    """How the expert-sorted buffer is laid out and multiplied: ``rows[e]`` rows per expert
    (batched: the block's C for every expert), then ``overflow[e]`` more (batched only)."""

    form: str  # one of FORMS
    rows: tuple[int, ...]
    overflow: tuple[int, ...] = ()
    offs: torch.Tensor | None = None  # grouped: the int32 end offset of every group, on the device

    @staticmethod
    def make(
        form: str,
        rows: list[int] | tuple[int, ...],
        device: torch.device,
        overflow: list[int] | tuple[int, ...] = (),
    ) -> RowPlan:
        if form not in FORMS:
            raise ValueError(f"unknown expert matmul form {form!r}; one of {FORMS}")
        rows, overflow = tuple(rows), tuple(overflow) if any(overflow) else ()
        if form == "batched" and len(set(rows)) > 1:
            raise ValueError("the batched form needs the same rows for every expert")
        if overflow and (form != "batched" or len(overflow) != len(rows)):
            raise ValueError("only the batched form has overflow rows, one count per expert")
        offs = None
        if form == "grouped":
            offs = torch.tensor(rows, device=device).cumsum(0).to(torch.int32)
        return RowPlan(form, rows, overflow, offs)

    @property
    def block_rows(self) -> int:
        """Rows of the batched block (E x C); the overflow region follows it."""
        return len(self.rows) * self.rows[0] if self.form == "batched" and self.rows else 0


def _loop(rows: tuple[int, ...], start: int) -> list[tuple[int, int, int]]:
    """(expert, first row, end row) of every expert with rows, from ``start`` on."""
    out = []
    for e, n in enumerate(rows):
        if n:
            out.append((e, start, start + n))
            start += n
    return out


def mm_groups(a_PX: torch.Tensor, w_EXY: torch.Tensor, plan: RowPlan) -> torch.Tensor:
    """out[rows of e] = a[rows of e] @ w[e]."""
    if plan.form == "grouped":
        return torch._grouped_mm(a_PX, w_EXY, offs=plan.offs)
    out = a_PX.new_empty(a_PX.shape[0], w_EXY.shape[-1])
    if plan.form == "batched":
        E, block = len(plan.rows), plan.block_rows
        C = block // max(E, 1)
        torch.bmm(a_PX[:block].view(E, C, -1), w_EXY, out=out[:block].view(E, C, -1))
        groups = _loop(plan.overflow, block)
    else:
        groups = _loop(plan.rows, 0)
    for e, lo, hi in groups:
        torch.mm(a_PX[lo:hi], w_EXY[e], out=out[lo:hi])
    return out


def mm_weight_grads(
    a_PX: torch.Tensor, b_PY: torch.Tensor, plan: RowPlan, dtype: torch.dtype
) -> torch.Tensor:
    """out[e] = a[rows of e]^T @ b[rows of e] in ``dtype``: (E, X, Y); zero for experts with no rows."""
    E = len(plan.rows)
    if plan.form == "batched":  # an idle expert's rows are all zero padding: its gradient is zero
        block = plan.block_rows
        C = block // max(E, 1)
        a_ECX, b_ECY = a_PX[:block].view(E, C, -1), b_PY[:block].view(E, C, -1)
        out = torch.bmm(a_ECX.transpose(1, 2), b_ECY).to(dtype)
        for e, lo, hi in _loop(plan.overflow, block):  # added in the gradient's dtype (fp32)
            out[e].add_(a_PX[lo:hi].t() @ b_PY[lo:hi])
        return out
    if plan.form == "grouped":
        out = torch._grouped_mm(a_PX.t(), b_PY, offs=plan.offs)
    else:
        out = a_PX.new_empty(E, a_PX.shape[1], b_PY.shape[1])
        for e, lo, hi in _loop(plan.rows, 0):
            torch.mm(a_PX[lo:hi].t(), b_PY[lo:hi], out=out[e])
    for e, n in enumerate(plan.rows):
        if not n:
            out[e].zero_()
    return out.to(dtype)


class ExpertSwiGLU(torch.autograd.Function):
    """SwiGLU of expert-sorted rows: ``y[rows of e] = (silu(x w1[e]^T) * (x w3[e]^T)) w2[e]``.

    Gate and up run as one (E, 2F, D) operand, read in place from the fused storage (a copy
    only when the weights are not stored fused, or need a cast that ``compute`` does not
    already hold). ``compute`` is an optional ``(w13_E2FD, w2_EFD)`` already in the compute
    dtype (the experts' bf16 copy of fp32 masters). Weight gradients leave in the
    parameters' dtype, w1's and w3's as two contiguous (E, F, D) tensors that autograd keeps
    as they are: in fp32 no step touches the weights beyond the matmuls.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        x_PD: torch.Tensor,
        w1: torch.Tensor,
        w3: torch.Tensor,
        w2: torch.Tensor,
        plan: RowPlan,
        compute: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        dtype = compute_dtype(x_PD)
        E, F_, D = w1.shape
        x_PD = x_PD.to(dtype).contiguous()
        if compute is not None and compute[0].dtype == dtype:
            w13_E2FD, w2_EFD = compute
        else:
            w13_E2FD = fused_gate_up(w1, w3)
            if w13_E2FD is not None:
                w13_E2FD = w13_E2FD.to(dtype)  # no-op in fp32; one cast (read once) under autocast
            else:
                w13_E2FD = w1.new_empty((E, 2 * F_, D), dtype=dtype)
                w13_E2FD[:, :F_].copy_(w1)
                w13_E2FD[:, F_:].copy_(w3)
            w2_EFD = w2.to(dtype)
        h_P2F = mm_groups(x_PD, w13_E2FD.transpose(1, 2), plan)
        a_PF = F.silu(h_P2F[:, :F_]).mul_(h_P2F[:, F_:])
        y_PD = mm_groups(a_PF, w2_EFD, plan)
        ctx.save_for_backward(x_PD, w13_E2FD, w2_EFD, h_P2F, a_PF)
        ctx.plan = plan
        ctx.param_dtype = w1.dtype
        return y_PD

    @staticmethod
    def backward(ctx, gy_PD: torch.Tensor):  # type: ignore[override]
        x_PD, w13_E2FD, w2_EFD, h_P2F, a_PF = ctx.saved_tensors
        plan: RowPlan = ctx.plan
        F_ = w2_EFD.shape[1]
        gy_PD = gy_PD.to(x_PD.dtype).contiguous()
        gate, up = h_P2F[:, :F_], h_P2F[:, F_:]
        ga_PF = mm_groups(gy_PD, w2_EFD.transpose(1, 2), plan)
        gh_P2F = torch.empty_like(h_P2F)
        # a = silu(gate) * up:  d/d up = silu(gate);  d/d gate = up * silu'(gate)
        torch.mul(ga_PF, F.silu(gate), out=gh_P2F[:, F_:])
        gh_P2F[:, :F_] = torch.ops.aten.silu_backward(ga_PF.mul_(up), gate)
        dt = ctx.param_dtype
        gw2 = mm_weight_grads(a_PF, gy_PD, plan, dt)
        gw1 = mm_weight_grads(gh_P2F[:, :F_], x_PD, plan, dt)
        gw3 = mm_weight_grads(gh_P2F[:, F_:], x_PD, plan, dt)
        gx_PD = mm_groups(gh_P2F, w13_E2FD, plan)
        return gx_PD, gw1, gw3, gw2, None, None
