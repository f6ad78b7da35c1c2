"""WSD schedule and optimizer parameter groups."""

from __future__ import annotations

import itertools

import pytest
import torch

from kimi_lab.config import compose, to_run_config
from kimi_lab.model.multimodal import KimiK25
from kimi_lab.optim import WSD, build_param_groups, wsd_multiplier


def test_wsd_warmup_stable_cosine_decay_to_floor() -> None:
    f = [
        wsd_multiplier(s, total_steps=100, warmup_steps=10, decay_steps=20, min_ratio=0.1) for s in range(100)
    ]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(b > a for a, b in itertools.pairwise(f[:10]))  # linear warmup
    assert all(v == 1.0 for v in f[10:80])  # long constant stage
    assert all(b < a for a, b in itertools.pairwise(f[80:]))  # cosine decay...
    assert f[99] == pytest.approx(0.1, abs=0.01) and min(f) >= 0.1  # ...to the floor
    assert f[90] == pytest.approx(0.1 + 0.9 * 0.5, abs=0.01)  # halfway down at half the decay


def test_wsd_drives_a_lambda_lr_and_pickles() -> None:
    import pickle

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=2.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, pickle.loads(pickle.dumps(WSD(20, 5, 5, 0.0))))
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.4) and lrs[10] == pytest.approx(2.0)
    assert lrs == pytest.approx([2.0 * wsd_multiplier(s, 20, 5, 5, 0.0) for s in range(20)])
    assert lrs[-1] < 0.2


def test_param_groups_never_decay_norms_and_cover_everything_once() -> None:
    model = KimiK25(to_run_config(compose(["model=tiny-vl"])).model)
    groups = {g.name: g for g in build_param_groups(model, weight_decay=0.1)}
    assert groups["language_model/norms+biases"].weight_decay == 0.0
    assert all(
        n.endswith(("norm.weight", "norm1.weight", "norm2.weight")) or n.endswith("bias") or "norm" in n
        for n in groups["vision_tower/norms+biases"].names
    )
    assert groups["language_model/matrices"].weight_decay == 0.1
    assert set(groups["language_model/embeddings+head"].names) == {
        "language_model.embed.weight",
        "language_model.lm_head.weight",
    }
    names = [n for g in groups.values() for n in g.names]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())


def test_lr_scale_zero_freezes_a_module() -> None:
    model = KimiK25(to_run_config(compose(["model=tiny-vl"])).model)
    groups = build_param_groups(model, 0.1, {"language_model": 0.0, "vision_tower": 1.0, "projector": 0.5})
    assert {g.name.split("/")[0] for g in groups} == {"vision_tower", "projector"}
    assert all(not p.requires_grad for p in model.language_model.parameters())
    assert {g.lr_scale for g in groups if g.name.startswith("projector")} == {0.5}
