"""The torch dropless backend equals a plain per-token loop, in outputs and gradients."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from kimi_lab.model.moe import experts as experts_module
from kimi_lab.model.moe.expert_matmuls import grouped_ok
from kimi_lab.model.moe.experts import (
    TorchExperts,
    bucket_rows,
    place_rows,
    reference_experts,
    sort_by_expert,
)


def _routing(T: int, E: int, K: int, unused: set[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    allowed = torch.tensor([e for e in range(E) if e not in unused])
    scores = torch.rand(T, len(allowed), generator=g)
    idx = allowed[scores.topk(K, dim=-1).indices]
    weights = torch.rand(T, K, generator=g)
    return idx, weights


# (path, padded rows, dim, ffn) -> the form that must run: unaligned widths cannot take the
# grouped GEMM and fall back to the per-expert loop; the batched form takes any width.
# "auto" here is given a block of 2 rows per expert: the rest of every expert's pairs overflow.
FORMS = {
    "loop-exact-rows": ("ragged", False, 12, 10, "loop"),
    "loop-bucketed-rows": ("ragged", True, 12, 10, "loop"),
    "grouped-mm-exact-rows": ("ragged", False, 16, 8, "grouped"),
    "grouped-mm-bucketed-rows": ("ragged", True, 16, 8, "grouped"),
    "batched-bmm": ("batched", False, 12, 10, "batched"),
    "batched-bmm-aligned": ("batched", True, 16, 8, "batched"),
    "batched-bmm-with-overflow": ("auto", False, 12, 10, "batched"),
}


@pytest.mark.parametrize(("T", "E", "K"), [(1, 4, 1), (24, 8, 2), (50, 16, 4)])
@pytest.mark.parametrize("form", list(FORMS))
def test_outputs_and_gradients_match_reference_loop(
    T: int, E: int, K: int, form: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, padded, dim, ffn, expected = FORMS[form]
    # Row bucketing normally runs for bf16 on CPU only; forced here so fp32 pins it exactly.
    monkeypatch.setattr(experts_module, "_pads_rows", lambda x, dtype: padded)
    # fp32 CPU runs the per-expert loop by choice; take the grouped GEMM wherever it can run.
    monkeypatch.setattr(experts_module, "use_grouped", grouped_ok)
    monkeypatch.setattr(experts_module, "batched_capacity", lambda *a, **k: 2)
    torch.manual_seed(T)
    experts = TorchExperts(E, dim=dim, ffn_dim=ffn, init_std=0.3)
    experts.path = path
    unused = {1, E - 1}  # experts that receive no token at all
    idx, weights = _routing(T, E, K, unused)
    x = torch.randn(T, dim, requires_grad=True)
    if expected == "grouped" and not hasattr(torch, "_grouped_mm"):
        expected = "loop"
    w = weights.clone().requires_grad_()

    out = experts(x, idx, w)
    assert experts.last_form == expected
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


@pytest.mark.parametrize("path", ["ragged", "batched"])
def test_gradcheck_in_float64(path: str) -> None:
    torch.manual_seed(0)
    experts = TorchExperts(6, dim=5, ffn_dim=4).double()
    experts.path = path
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


@pytest.mark.parametrize("capacity", [None, 24, 12], ids=["bucketed", "shared-capacity", "with-overflow"])
def test_padded_layout_places_every_pair_once_in_its_experts_rows(capacity: int | None) -> None:
    from kimi_lab.model.moe.expert_matmuls import RowPlan

    T, E, K = 40, 8, 3
    idx, _ = _routing(T, E, K, unused={2})
    order_S, token_S, counts = sort_by_expert(idx, E)
    cpu = torch.device("cpu")
    if capacity is None:
        plan = RowPlan.make("loop", [bucket_rows(n) for n in counts], cpu)
    else:
        plan = RowPlan.make("batched", [capacity] * E, cpu, [max(n - capacity, 0) for n in counts])
    assert bool(plan.overflow) == (capacity == 12)  # 15 pairs per expert on average
    token_P, row_of_pair_S = place_rows(idx, order_S, token_S, counts, plan, pad_token=T)
    rows, over = list(plan.rows), list(plan.overflow) or [0] * E
    assert len(token_P) == sum(rows) + sum(over) and counts[2] == 0
    assert len(set(row_of_pair_S.tolist())) == idx.numel()  # a permutation into the buffer
    starts = [sum(rows[:e]) for e in range(E)]
    over_starts = [sum(rows) + sum(over[:e]) for e in range(E)]
    seen = [0] * E
    for s, e in enumerate(idx.reshape(-1).tolist()):  # pair order: each expert's pairs in order
        r = int(row_of_pair_S[s])
        if seen[e] < rows[e]:
            assert r == starts[e] + seen[e]  # in its expert's block, in order
        else:
            assert r == over_starts[e] + seen[e] - rows[e]  # then in its overflow rows
        seen[e] += 1
        assert int(token_P[r]) == s // K  # and holding its token
    padding = torch.ones(len(token_P), dtype=torch.bool)
    padding[row_of_pair_S] = False
    assert (token_P[padding] == T).all() and int(padding.sum()) == len(token_P) - idx.numel()


def test_auto_path_batches_balanced_routing_overflows_hot_experts_and_falls_back_on_a_skewed_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kimi_lab.model.moe import expert_path

    monkeypatch.setattr(
        expert_path, "calibration", lambda *a, **k: expert_path.Calibration(1.5, 16.0)
    )  # as if measured
    experts = TorchExperts(8, dim=16, ffn_dim=8)
    x, w = torch.randn(64, 16), torch.rand(64, 2)
    t = torch.arange(64)
    balanced = torch.stack([t % 8, (t + 3) % 8], dim=1)  # 16 pairs each
    assert experts._plan(x, [16] * 8) == _row_plan("batched", [16] * 8)
    experts(x, balanced, w)
    assert experts.last_form == "batched"
    # expert 0 holds half the pairs: a block of 16 costs 128 / 1.5 + 48 overflow + 16 (its call) > 128
    skewed = torch.stack([torch.zeros(64, dtype=torch.long), t % 7 + 1], dim=1)
    out = experts(x, skewed, w)
    assert experts.last_form == "loop"
    torch.testing.assert_close(out, reference_experts(experts, x, skewed, w), rtol=1e-5, atol=1e-6)
    # 40 pairs on expert 0, 12-16 on the others: a block of 16 (85) + 24 overflow rows + 16 < 128
    second = torch.where(t < 32, torch.where(t % 8 == 0, 1, 0), (t + 1) % 8)
    hot = torch.stack([t % 8, second], dim=1)
    counts = torch.bincount(hot.reshape(-1), minlength=8).tolist()
    assert counts[0] == 40 and max(counts[1:]) <= 16
    plan = experts._plan(x, counts)
    assert plan.form == "batched" and plan.rows == (16,) * 8 and plan.overflow == (24,) + (0,) * 7
    out = experts(x, hot, w)
    torch.testing.assert_close(out, reference_experts(experts, x, hot, w), rtol=1e-5, atol=1e-6)


def _row_plan(form: str, rows: list[int]) -> object:
    from kimi_lab.model.moe.expert_matmuls import RowPlan

    return RowPlan.make(form, rows, torch.device("cpu"))


def test_the_gain_is_measured_once_per_shape_and_capacity_follows_the_cost_rule(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kimi_lab.model.moe import expert_path

    cpu = torch.device("cpu")
    cal = expert_path.calibration(cpu, torch.float32, 16, 8, 20, "loop", backward=True)
    assert 0 < cal.gain < float("inf") and 0 < cal.call_rows < float("inf")
    monkeypatch.setattr(expert_path, "_measure", lambda *a: pytest.fail("measured twice"))
    same_octave = expert_path.calibration(cpu, torch.float32, 16, 8, 31, "loop", backward=True)
    assert same_octave == cal
    args = {"device": cpu, "dtype": torch.float32, "dim": 16, "ffn": 8, "ragged_form": "loop"}
    cap = expert_path.batched_capacity
    assert cap([64] * 8, 512, [64], backward=True, **args) == 64  # no padding at all: measured or not

    monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: True)  # gain 1.25, call 16
    assert cap([40] * 7 + [32], 312, [48], backward=True, **args) == 48  # 384 / 1.25 = 307 < 312
    assert cap([40] * 7 + [16], 296, [16, 48], backward=True, **args) == 0  # 102 + 7 x (24 + 16), 307 > 296
    assert cap([100] + [1] * 7, 107, [16, 112], backward=True, **args) == 0  # 102 + 100 > 107; 896 > 2 x 107
    assert cap([16] * 7 + [40], 152, [16, 48], backward=True, **args) == 16  # 102 + 24 + 16 < 152

    monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: False)
    monkeypatch.setattr(expert_path, "calibration", lambda *a, **k: expert_path.Calibration(100.0, 16.0))
    # under gradients the block never holds more than twice the ragged rows, whatever the gain
    assert cap([100] + [1] * 7, 107, [16, 112], backward=True, **args) == 16
    assert cap([100] + [1] * 7, 107, [16, 112], backward=False, **args) == 112


def test_padding_rows_are_zero_and_change_no_gradient() -> None:
    """Even a nonzero gradient arriving at padding rows leaves every weight gradient as without padding."""
    from kimi_lab.model.moe.expert_matmuls import ExpertSwiGLU, RowPlan

    T, E, K = 20, 6, 2
    torch.manual_seed(0)
    experts = TorchExperts(E, dim=16, ffn_dim=8, init_std=0.3)
    idx, _ = _routing(T, E, K, unused={4})
    x_T1D = torch.cat([torch.randn(T, 16), torch.zeros(1, 16)])  # the zero row padding reads
    order_S, token_S, counts = sort_by_expert(idx, E)
    results = {}
    for form, rows in (("batched", [max(counts) + 5] * E), ("loop", counts)):
        plan = RowPlan.make(form, rows, x_T1D.device)
        token_P, _ = place_rows(idx, order_S, token_S, counts, plan, pad_token=T)
        y_PD = ExpertSwiGLU.apply(
            x_T1D.index_select(0, token_P), experts.w1, experts.w3, experts.w2, plan, None
        )
        padding = token_P == T
        assert int(padding.sum()) == sum(rows) - sum(counts) and (y_PD[padding] == 0).all()
        results[form] = (y_PD, padding)
    (y_b, pad_b), (y_l, _) = results["batched"], results["loop"]
    torch.testing.assert_close(y_b[~pad_b], y_l, rtol=1e-5, atol=1e-6)  # real rows in the same order
    gy_b = torch.randn_like(y_b)
    g_b = torch.autograd.grad(y_b, list(experts.parameters()), gy_b)
    g_l = torch.autograd.grad(y_l, list(experts.parameters()), gy_b[~pad_b])
    for a, b in zip(g_b, g_l, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert torch.count_nonzero(a[4]) == 0  # the idle expert
