"""Routed experts for a handful of tokens (decode steps): fixed shapes, no weight copies, no host sync.

Shape legend: T tokens, D hidden, E experts, F expert FFN width, K experts per token,
S = T*K token-expert pairs.

The training path (``TorchExperts``) reads the per-expert counts on the host, pads rows
and builds a fused (E, 2F, D) weight copy for its backward: right for thousands of
tokens, mostly overhead for the 1-64 tokens of a decode step. Here every form reads the
canonical weights in place, and those that run on CUDA never read a count on the host:

- ``grouped``: pairs sorted by expert, one grouped GEMM per weight with the group offsets
  left on the device (``torch._grouped_mm``; CPU fp32/bf16, CUDA bf16 with aligned sizes).
- ``loop``: CPU only, for the fewest pairs: a plain matmul per expert that was hit.
  Reading the counts there costs nothing (CPU work is synchronous anyway), and it is
  measured faster than the grouped kernel's setup below about 8 pairs.
- ``batched``: CPU only: every expert's pairs padded with zero rows to a capacity C,
  then one ``torch.bmm`` per weight over (E, C, .) (pairs beyond C: a matmul per such
  expert): E x C rows instead of the pairs, but three calls instead of three per expert
  (which is what the grouped kernel does on CPU). Taken instead of ``grouped`` where
  ``expert_path``'s measured gain says the padding pays (a few rows per expert).
- ``dense``: every token through every expert as three matmuls over the weights viewed
  as (E*F, D), scaled by a (T, E) gate that is zero for unchosen experts: E/K times the
  useful FLOPs, but each expert's weights read once; where grouped GEMM is unavailable.
- ``gather``: each pair's expert weights gathered (S, F, D) and applied by batched
  matrix-vector products: for very few pairs against many experts, same fallback.

``decode_strategy`` picks one from the shapes, dtype and device (on CPU also from the
routing's counts, read for free there; the measurements behind the choices:
benchmarks/README.md). Every form equals ``reference_experts``.
The forms run in the weights' dtype with autocast off: casting the expert weights to
bf16 every step would move more memory than the step's matmuls do.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from kimi_lab.model.moe.expert_matmuls import RowPlan, fused_gate_up, mm_groups
from kimi_lab.model.moe.expert_path import batched_capacity
from kimi_lab.model.moe.experts import place_rows, sort_by_expert

# Up to this many tokens a forward without gradients takes this path (see MoELayer).
DECODE_MAX_TOKENS = 64
_LOOP_MAX_PAIRS = 8
STRATEGIES = ("grouped", "loop", "batched", "dense", "gather")


def _grouped_mm_ok(w: torch.Tensor) -> bool:
    if not hasattr(torch, "_grouped_mm"):
        return False
    if w.device.type == "cpu":
        ok = w.dtype in (torch.float32, torch.bfloat16)
    elif w.device.type == "cuda":
        ok = w.dtype == torch.bfloat16
    else:
        return False
    per = 16 // w.element_size()
    return ok and all(d % per == 0 for d in w.shape[1:])


def decode_strategy(
    n_tokens: int, top_k: int, w1_EFD: torch.Tensor, top_idx_TK: torch.Tensor | None = None
) -> str:
    """The form for this step; on CPU, given the routing, ``batched`` where it is measured to win."""
    pairs, E = n_tokens * top_k, w1_EFD.shape[0]
    cpu = w1_EFD.device.type == "cpu"
    if cpu and pairs < _LOOP_MAX_PAIRS:
        return "loop"
    if _grouped_mm_ok(w1_EFD):
        if cpu and top_idx_TK is not None:
            return "batched" if _capacity(top_idx_TK, w1_EFD) else "grouped"
        return "grouped"
    # dense reads E experts' weights; gather copies and reads about 3 per pair
    return "dense" if 3 * pairs >= E else "gather"


def _capacity(top_idx_TK: torch.Tensor, w1_EFD: torch.Tensor) -> int:
    """The batched form's block capacity for this routing (0: the grouped form is cheaper)."""
    E, F_, D = w1_EFD.shape
    counts = torch.bincount(top_idx_TK.reshape(-1), minlength=E).tolist()
    return batched_capacity(
        counts,
        top_idx_TK.numel(),
        sorted({n for n in counts if n}),
        device=w1_EFD.device,
        dtype=w1_EFD.dtype,
        dim=D,
        ffn=F_,
        ragged_form="grouped",
        backward=False,
    )


def decode_experts(
    x_TD: torch.Tensor,
    top_idx_TK: torch.Tensor,
    top_weight_TK: torch.Tensor,
    w1_EFD: torch.Tensor,
    w3_EFD: torch.Tensor,
    w2_EFD: torch.Tensor,
    strategy: str | None = None,
) -> torch.Tensor:
    """sum_k weight[t, k] * SwiGLU_{idx[t, k]}(x[t]) for every token, returned in x's dtype."""
    strategy = strategy or decode_strategy(x_TD.shape[0], top_idx_TK.shape[1], w1_EFD, top_idx_TK)
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown decode strategy {strategy!r}; one of {STRATEGIES}")
    dev, dt = x_TD.device.type, w1_EFD.dtype
    with torch.autocast(dev, enabled=False) if torch.is_autocast_enabled(dev) else contextlib.nullcontext():
        x = x_TD if x_TD.dtype == dt else x_TD.to(dt)
        w = top_weight_TK if top_weight_TK.dtype == dt else top_weight_TK.to(dt)
        y = _FORMS[strategy](x, top_idx_TK, w, w1_EFD, w3_EFD, w2_EFD)
    return y if y.dtype == x_TD.dtype else y.to(x_TD.dtype)


def _sorted_pairs(top_idx_TK: torch.Tensor, w_TK: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(token, gate weight) of each token-expert pair, pairs sorted by expert."""
    order_S = torch.argsort(top_idx_TK.reshape(-1), stable=True)
    return order_S // top_idx_TK.shape[1], w_TK.reshape(-1)[order_S]


def _grouped(
    x: torch.Tensor, idx: torch.Tensor, w: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor, w2: torch.Tensor
) -> torch.Tensor:
    tok_S, wt_S = _sorted_pairs(idx, w)
    flat_S = idx.reshape(-1)
    # counts by scatter_add: CUDA's bincount reads the largest id on the host first
    counts_E = torch.zeros(w1.shape[0], dtype=torch.int32, device=x.device)
    offs_E = counts_E.scatter_add_(0, flat_S, torch.ones_like(flat_S, dtype=torch.int32)).cumsum(
        0, dtype=torch.int32
    )
    x_SD = x.index_select(0, tok_S)
    h1_SF = torch._grouped_mm(x_SD, w1.transpose(1, 2), offs=offs_E)
    h3_SF = torch._grouped_mm(x_SD, w3.transpose(1, 2), offs=offs_E)
    y_SD = torch._grouped_mm(F.silu(h1_SF).mul_(h3_SF), w2, offs=offs_E).mul_(wt_S[:, None])
    return torch.zeros_like(x).index_add_(0, tok_S, y_SD)


def _loop(
    x: torch.Tensor, idx: torch.Tensor, w: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor, w2: torch.Tensor
) -> torch.Tensor:
    tok_S, wt_S = _sorted_pairs(idx, w)
    counts = torch.bincount(
        idx.reshape(-1), minlength=w1.shape[0]
    ).tolist()  # CPU only: no device to wait for
    x_SD = x.index_select(0, tok_S)
    y_SD = torch.empty_like(x_SD)
    start = 0
    for e, n in enumerate(counts):
        if n:
            rows = x_SD[start : start + n]
            a = F.silu(F.linear(rows, w1[e])).mul_(F.linear(rows, w3[e]))
            torch.mm(a, w2[e], out=y_SD[start : start + n])
            start += n
    return torch.zeros_like(x).index_add_(0, tok_S, y_SD.mul_(wt_S[:, None]))


def _batched(
    x: torch.Tensor, idx: torch.Tensor, w: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor, w2: torch.Tensor
) -> torch.Tensor:
    (T, D), (E, F_, _) = x.shape, w1.shape
    order_S, token_S, counts = sort_by_expert(idx, E)  # the counts' host read is free on CPU
    # where the grouped GEMM can run, the capacity decode_strategy chose; else (or forced) all
    C = (_capacity(idx, w1) if _grouped_mm_ok(w1) else 0) or max(counts)
    plan = RowPlan.make("batched", [C] * E, x.device, [max(n - C, 0) for n in counts])
    token_P, row_of_pair_S = place_rows(idx, order_S, token_S, counts, plan, T)
    x_PD = torch.cat([x, x.new_zeros(1, D)]).index_select(0, token_P)  # padding rows: the zero row
    w13 = fused_gate_up(w1, w3)
    if w13 is not None:  # experts stored fused: one product for gate and up
        h1_PF, h3_PF = mm_groups(x_PD, w13.transpose(1, 2), plan).split(F_, dim=-1)
    else:
        h1_PF, h3_PF = mm_groups(x_PD, w1.transpose(1, 2), plan), mm_groups(x_PD, w3.transpose(1, 2), plan)
    weight_P = x.new_zeros(len(token_P)).index_copy_(0, row_of_pair_S, w.reshape(-1))
    y_PD = mm_groups(F.silu(h1_PF).mul_(h3_PF), w2, plan).mul_(weight_P[:, None])
    return x.new_zeros(T + 1, D).index_add_(0, token_P, y_PD)[:T]


def _dense(
    x: torch.Tensor, idx: torch.Tensor, w: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor, w2: torch.Tensor
) -> torch.Tensor:
    (T, D), (E, F_, _) = x.shape, w1.shape
    gate_TE = torch.zeros(T, E, dtype=x.dtype, device=x.device).scatter_(1, idx, w)
    w13 = fused_gate_up(w1, w3)
    if w13 is not None:  # experts stored fused: one product for gate and up
        h1_TEF, h3_TEF = F.linear(x, w13.reshape(E * 2 * F_, D)).view(T, E, 2 * F_).split(F_, dim=-1)
    else:
        h1_TEF = F.linear(x, w1.reshape(E * F_, D)).view(T, E, F_)
        h3_TEF = F.linear(x, w3.reshape(E * F_, D)).view(T, E, F_)
    a_TEF = F.silu(h1_TEF).mul_(h3_TEF).mul_(gate_TE[:, :, None])
    return torch.mm(a_TEF.view(T, E * F_), w2.view(E * F_, D))


def _gather(
    x: torch.Tensor, idx: torch.Tensor, w: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor, w2: torch.Tensor
) -> torch.Tensor:
    (T, D), K = x.shape, idx.shape[1]
    idx_S = idx.reshape(-1)
    x_SD1 = x.repeat_interleave(K, dim=0)[:, :, None]
    h1_SF = torch.bmm(w1[idx_S], x_SD1).squeeze(-1)
    h3_SF = torch.bmm(w3[idx_S], x_SD1).squeeze(-1)
    a_SF = F.silu(h1_SF).mul_(h3_SF).mul_(w.reshape(-1, 1))
    return torch.bmm(a_SF[:, None, :], w2[idx_S]).squeeze(1).view(T, K, D).sum(1)


_FORMS = {"grouped": _grouped, "loop": _loop, "batched": _batched, "dense": _dense, "gather": _gather}
