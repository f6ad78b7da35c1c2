"""The torch dropless backend equals a plain per-token loop, in outputs and gradients."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from kimi_lab.model.moe import experts as experts_module
from kimi_lab.model.moe.experts import (
    TorchExperts,
    _grouped_ok,
    bucket_rows,
    expert_layout,
    reference_experts,
)


def _routing(T: int, E: int, K: int, unused: set[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    allowed = torch.tensor([e for e in range(E) if e not in unused])
    scores = torch.rand(T, len(allowed), generator=g)
    idx = allowed[scores.topk(K, dim=-1).indices]
    weights = torch.rand(T, K, generator=g)
    return idx, weights


@pytest.mark.parametrize(("T", "E", "K"), [(1, 4, 1), (24, 8, 2), (50, 16, 4)])
@pytest.mark.parametrize(("dim", "ffn"), [(12, 10), (16, 8)], ids=["per-expert-loop", "grouped-mm"])
@pytest.mark.parametrize("padded", [False, True], ids=["exact-rows", "bucketed-rows"])
def test_outputs_and_gradients_match_reference_loop(
    T: int, E: int, K: int, dim: int, ffn: int, padded: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Row bucketing normally runs for bf16 on CPU only; forced here so fp32 pins it exactly.
    monkeypatch.setattr(experts_module, "_pads_rows", lambda x, dtype: padded)
    # fp32 CPU runs the per-expert loop by choice; take the grouped GEMM wherever it can run.
    monkeypatch.setattr(experts_module, "_use_grouped", experts_module._grouped_ok)
    torch.manual_seed(T)
    experts = TorchExperts(E, dim=dim, ffn_dim=ffn, init_std=0.3)
    unused = {1, E - 1}  # experts that receive no token at all
    idx, weights = _routing(T, E, K, unused)
    x = torch.randn(T, dim, requires_grad=True)
    # Both matmul paths are covered: unaligned widths fall back to the per-expert loop.
    assert _grouped_ok(x, dim, ffn) == (ffn % 4 == 0 and hasattr(torch, "_grouped_mm"))
    w = weights.clone().requires_grad_()

    out = experts(x, idx, w)
    ref_params = {k: v.detach().clone().requires_grad_() for k, v in experts.named_parameters()}
    x_ref = x.detach().clone().requires_grad_()
    w_ref = weights.clone().requires_grad_()
    ref = reference_experts(type("P", (), ref_params)(), x_ref, idx, w_ref)  # same weights, plain loop
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)

    grad = torch.randn_like(out)
    out.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(w.grad, w_ref.grad, rtol=1e-5, atol=1e-6)
    for name, p in experts.named_parameters():
        torch.testing.assert_close(p.grad, ref_params[name].grad, rtol=1e-5, atol=1e-6)
        for e in unused:  # no token: exactly zero gradient, not garbage
            assert torch.count_nonzero(p.grad[e]) == 0


def test_gradcheck_in_float64() -> None:
    torch.manual_seed(0)
    experts = TorchExperts(6, dim=5, ffn_dim=4).double()
    idx, weights = _routing(9, 6, 2, unused={3})
    x = torch.randn(9, 5, dtype=torch.float64, requires_grad=True)
    w = weights.double().requires_grad_()
    params = {k: v.detach().clone().requires_grad_() for k, v in experts.named_parameters()}

    def f(x, w, w1, w3, w2):
        return functional_call(experts, {"w1": w1, "w3": w3, "w2": w2}, (x, idx, w))

    assert torch.autograd.gradcheck(f, (x, w, params["w1"], params["w3"], params["w2"]))


def test_expert_weights_are_never_indexed_under_autograd() -> None:
    """Indexing w[e] in autograd gives each expert a full-size zero gradient; the backend must not."""
    experts = TorchExperts(8, dim=6, ffn_dim=4)
    idx, weights = _routing(16, 8, 2, unused=set())
    out = experts(torch.randn(16, 6), idx, weights.requires_grad_())
    weight_ids = {id(p) for p in experts.parameters()}
    slicing = {"SelectBackward0", "IndexBackward0", "SliceBackward0", "UnbindBackward0", "SplitBackward0"}
    stack, seen = [out.grad_fn], set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        for child, _ in fn.next_functions:
            if child is None:
                continue
            if type(child).__name__ == "AccumulateGrad" and id(child.variable) in weight_ids:
                assert type(fn).__name__ not in slicing, f"{type(fn).__name__} feeds an expert weight"
            stack.append(child)


def test_bf16_autocast_is_close_to_fp32() -> None:
    torch.manual_seed(0)
    experts = TorchExperts(8, dim=64, ffn_dim=32, init_std=0.05)
    idx, weights = _routing(64, 8, 2, unused=set())
    x = torch.randn(64, 64)
    ref = experts(x, idx, weights)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = experts(x, idx, weights)
    assert out.dtype == torch.bfloat16
    rel = (out.float() - ref).norm() / ref.norm()
    assert rel < 2e-2
    out.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in experts.parameters())


def test_row_buckets_are_few_and_tight() -> None:
    sizes = {bucket_rows(n) for n in range(1, 1 << 15)}
    assert len(sizes) <= 8 * 16  # a handful per power of two: every kernel stays cached
    for n in range(1, 128):  # small groups: the next multiple of 16
        assert bucket_rows(n) == -(-n // 16) * 16
    for n in (128, 129, 1000, 4097, 30000):  # large ones: at most 1/8 padding
        assert n <= bucket_rows(n) <= n * 9 / 8
    assert bucket_rows(0) == 0


def test_padded_layout_places_every_pair_once_in_its_experts_rows() -> None:
    idx, _ = _routing(40, 8, 3, unused={2})
    token_P, row_of_pair_S, rows = expert_layout(idx, 8, pad=True)
    assert len(token_P) == sum(rows) and rows[2] == 0
    assert len(set(row_of_pair_S.tolist())) == idx.numel()  # a permutation into the buffer
    starts = [sum(rows[:e]) for e in range(8)]
    for s, e in enumerate(idx.reshape(-1).tolist()):
        r = int(row_of_pair_S[s])
        assert starts[e] <= r < starts[e] + rows[e]  # inside its expert's block
        assert int(token_P[r]) == s // 3  # and holding its token
