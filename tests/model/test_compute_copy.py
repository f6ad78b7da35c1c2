"""The experts' bf16 compute copy: made once per change of the fp32 masters, never saved, resume exact."""

from __future__ import annotations

import copy
import io
from collections.abc import Callable

import pytest
import torch

from kimi_lab.model.moe.compute_copy import ComputeCopy
from kimi_lab.model.moe.experts import TorchExperts
from kimi_lab.optim.muon import MuonAdamW

E, D, F, T, K = 8, 32, 16, 48, 2


def _batch(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    idx = torch.rand(T, E, generator=g).topk(K, dim=-1).indices
    return torch.randn(T, D, generator=g), idx, torch.rand(T, K, generator=g)


def _experts(keep_copy: bool = True) -> TorchExperts:
    torch.manual_seed(0)
    ex = TorchExperts(E, D, F, init_std=0.1)
    ex.keep_compute_copy = keep_copy
    return ex


OPTIMIZERS: dict[str, Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]] = {
    "muon": lambda ps: MuonAdamW([{"params": ps, "use_muon": True}], lr=0.02),
    "adamw-foreach": lambda ps: torch.optim.AdamW(ps, lr=1e-2, foreach=True),
    "adamw-fused": lambda ps: torch.optim.AdamW(ps, lr=1e-2, fused=True),
}


def _step(ex: TorchExperts, opt: torch.optim.Optimizer, seed: int) -> torch.Tensor:
    x, idx, w = _batch(seed)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ex(x, idx, w)
    out.float().square().mean().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return out.detach()


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_the_copy_is_cast_once_per_optimizer_step_and_equals_a_fresh_cast(optimizer: str) -> None:
    ex, fresh = _experts(), _experts(keep_copy=False)  # same weights; fresh casts every forward
    opt, opt_fresh = (
        OPTIMIZERS[optimizer](list(ex.parameters())),
        OPTIMIZERS[optimizer](list(fresh.parameters())),
    )
    x, idx, w = _batch(0)
    for step in range(3):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            first = ex(x, idx, w)
            made = ex.compute_copy._value
            assert made is not None and made[0].dtype == torch.bfloat16
            second = ex(x, idx, w)  # a second micro-batch on the same masters: no new cast
            assert ex.compute_copy._value is made
            expected = fresh(x, idx, w)
        assert torch.equal(first, expected) and torch.equal(second, expected)
        _step(ex, opt, seed=step + 1)
        _step(fresh, opt_fresh, seed=step + 1)
        # the masters moved: the next forward recasts (checked against the fresh cast above)
        assert all(torch.equal(a, b) for a, b in zip(ex.parameters(), fresh.parameters(), strict=True))


def test_fp32_runs_and_handed_over_weights_keep_no_copy() -> None:
    ex = _experts()
    x, idx, w = _batch(0)
    ex(x, idx, w)  # fp32: the weights are read as they are
    assert ex.compute_copy.nbytes == 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ex(x, idx, w)
    assert ex.compute_copy.nbytes == sum(p.numel() * 2 for p in ex.parameters())  # half the fp32 masters
    assert not any(t.requires_grad for t in ex.compute_copy._value)  # a constant, no graph to the masters
    ex.unfuse_()  # what FSDP2's setup calls: the wrapper owns the weights' copies from now on
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ex(x, idx, w)
    assert ex.compute_copy.nbytes == 0

    class Sharded(torch.Tensor):  # any tensor subclass (DTensor): no storage of its own to cast
        pass

    w_sub = ex.w1.detach().as_subclass(Sharded)
    assert ComputeCopy().get(w_sub, ex.w3, ex.w2, torch.bfloat16) is None


def test_checkpoints_hold_only_the_fp32_masters_and_resume_exactly() -> None:
    ex = _experts()
    opt = OPTIMIZERS["muon"](list(ex.parameters()))
    _step(ex, opt, seed=1)
    buf = io.BytesIO()
    torch.save({"model": ex.state_dict(), "opt": opt.state_dict()}, buf)
    sd = ex.state_dict()
    assert set(sd) == {"w1", "w3", "w2"} and all(v.dtype == torch.float32 for v in sd.values())
    whole = [_step(ex, opt, seed=s) for s in (2, 3)]

    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    resumed = TorchExperts(E, D, F)
    resumed.load_state_dict(saved["model"])
    opt2 = OPTIMIZERS["muon"](list(resumed.parameters()))
    opt2.load_state_dict(saved["opt"])
    again = [_step(resumed, opt2, seed=s) for s in (2, 3)]
    for a, b in zip(whole, again, strict=True):
        assert torch.equal(a, b)  # bit for bit: the copy is rebuilt from the same masters
    for a, b in zip(ex.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_copy_made_under_inference_mode_serves_training_and_moves_with_the_module() -> None:
    ex = _experts()
    x, idx, w = _batch(0)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        ex(x, idx, w)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ex(x.requires_grad_(), idx, w)
    out.float().sum().backward()  # the saved copy is a normal tensor
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in ex.parameters())
    clone = copy.deepcopy(ex).double()  # new storage: the copy is dropped, not reused
    assert clone.compute_copy.nbytes == 0
