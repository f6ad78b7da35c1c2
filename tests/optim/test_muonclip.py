"""Muon (update RMS), QK-Clip (MLA and standard attention), parameter groups, WSD in tokens."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from kimi_lab.config import compose, to_run_config
from kimi_lab.model.attention import head_max_logits
from kimi_lab.model.multimodal import KimiK25
from kimi_lab.optim.groups import build_param_groups
from kimi_lab.optim.muon import MuonAdamW, muon_scale, orthogonalise
from kimi_lab.optim.qk_clip import qk_clip_step, set_measuring
from kimi_lab.optim.schedule import schedule_steps


def _reference_newton_schulz(G: torch.Tensor) -> torch.Tensor:
    """Moonlight's / K2's orthogonalisation, written out: 5 quintic steps, nothing after."""
    X = G.float()
    if G.shape[-2] > G.shape[-1]:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(5):
        A = X @ X.mT
        X = 3.4445 * X + (-4.7750 * A + 2.0315 * A @ A) @ X
    return X.mT if G.shape[-2] > G.shape[-1] else X


@pytest.mark.parametrize("shape", [(64, 64), (256, 64), (64, 512), (8, 128, 32)])
def test_newton_schulz_defaults_to_the_reference(shape) -> None:
    torch.manual_seed(0)
    G = torch.randn(*shape)
    torch.testing.assert_close(orthogonalise(G), _reference_newton_schulz(G))
    w = torch.nn.Parameter(torch.zeros(shape[-2:]))
    assert MuonAdamW([{"params": [w], "use_muon": True}], lr=0.1).defaults["ns_polish_steps"] == 0
    assert to_run_config(compose([])).phase.optim.ns_polish_steps == 0


@pytest.mark.parametrize("shape", [(64, 64), (256, 64), (64, 512), (8, 128, 32), (1000, 300)])
def test_polish_steps_bring_the_update_rms_to_two_tenths(shape) -> None:
    torch.manual_seed(0)
    G = torch.randn(*shape)
    polished = orthogonalise(G, polish=2) * muon_scale(G.shape)
    reference = orthogonalise(G) * muon_scale(G.shape)
    rms = polished.pow(2).mean().sqrt().item()
    assert abs(rms - 0.2) / 0.2 < 0.05
    # the quintic alone leaves singular values above 1; the polish brings them down to 1
    assert torch.linalg.svdvals(reference / muon_scale(G.shape)).max() > 1.02
    assert torch.linalg.svdvals(polished / muon_scale(G.shape)).max() < 1.001


def test_muon_orthogonalises_fused_gate_and_up_apart() -> None:
    """The dense FFN and the shared experts store gate and up as one (2F, D) ``w13``; the update
    must be what Muon gives gate_proj and up_proj as separate matrices (as in the reference)."""
    from kimi_lab.phases.pretrain import PretrainModule

    torch.manual_seed(0)
    cfg = to_run_config(compose(["model=tiny", "phase.optim.name=muon", "phase.optim.weight_decay=0"]))
    module = PretrainModule(cfg)
    opt = module.configure_optimizers()["optimizer"]
    lm = module.model.language_model
    fused = {"dense": lm.layers[0].ffn.w13.weight, "shared": lm.layers[1].ffn.shared.w13.weight}
    before = {k: w.detach().clone() for k, w in fused.items()}
    for p in module.parameters():
        p.grad = torch.randn_like(p)
    grads = {k: w.grad.clone() for k, w in fused.items()}
    lr = opt.param_groups[0]["lr"]
    opt.step()
    for name, w in fused.items():
        update = (before[name] - w.detach()) / lr
        gate, up = grads[name].chunk(2, dim=0)
        apart = torch.cat([_reference_newton_schulz(g) * 0.2 * max(g.shape) ** 0.5 for g in (gate, up)])
        torch.testing.assert_close(update, apart, rtol=1e-3, atol=1e-4, msg=name)
        whole = _reference_newton_schulz(grads[name]) * 0.2 * max(w.shape) ** 0.5
        assert (whole - apart).norm() > 0.05 * apart.norm(), name  # the two really differ
    # A checkpoint written before the parts existed resumes with them (they are the model's structure).
    parts = [g["fused_row_parts"] for g in opt.param_groups]
    state = opt.state_dict()
    for g in state["param_groups"]:
        del g["fused_row_parts"]
    opt.load_state_dict(state)
    assert [g["fused_row_parts"] for g in opt.param_groups] == parts
    assert any((128, 128) in p for p in parts)  # tiny's dense FFN: gate 128 + up 128 rows


def test_muon_step_applies_decoupled_weight_decay_and_scaled_update() -> None:
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(32, 16))
    w0 = w.detach().clone()
    w.grad = torch.randn(32, 16)
    opt = MuonAdamW([{"params": [w], "use_muon": True}], lr=0.01, weight_decay=0.1, momentum=0.95)
    opt.step()
    expected = w0 * (1 - 0.01 * 0.1) - 0.01 * orthogonalise(w.grad) * muon_scale(w.shape)
    torch.testing.assert_close(w.detach(), expected)


def _big_logit_model() -> tuple[KimiK25, torch.Tensor]:
    torch.manual_seed(0)
    model = KimiK25(to_run_config(compose(["model=tiny-vl"])).model).train()
    with torch.no_grad():  # head 0 of layer 0 gets large logits, the rest stay small
        attn = model.language_model.layers[0].attn
        q = attn.q_b_proj.weight.view(attn.n_heads, attn.nope_dim + attn.rope_dim, -1)
        q[0] *= 40.0
        attn.kv_b_proj.weight.view(attn.n_heads, attn.nope_dim + attn.v_dim, -1)[0, : attn.nope_dim] *= 40.0
    return model, torch.randint(32, 512, (2, 24))  # ordinary tokens, no vision placeholders


def _step(model: KimiK25, ids: torch.Tensor, tau: float | None, lr: float = 1e-5):
    groups = build_param_groups(model, 0.1)
    opt = MuonAdamW(
        [
            {
                "params": g.params,
                "weight_decay": g.weight_decay,
                "use_muon": g.name.endswith("/matrices"),
                "fused_row_parts": g.fused_row_parts,
            }
            for g in groups
        ],
        lr=lr,
    )
    set_measuring(model, True)
    out = model(ids[:, :-1])
    F.cross_entropy(out.logits.flatten(0, 1), ids[:, 1:].reshape(-1)).backward()
    opt.step()
    return qk_clip_step(model, tau)


def _maxima(model: KimiK25, ids: torch.Tensor) -> torch.Tensor:
    rows = []
    with torch.no_grad():
        x = model.language_model.embed(ids[:, :-1])
        cos, sin = model.language_model.rope(torch.arange(x.shape[1]).expand(x.shape[0], -1))
        for layer in model.language_model.layers:
            q, k, _ = layer.attn.project_qkv(layer.attn_norm(x), cos, sin)
            rows.append(head_max_logits(q, k, layer.attn.scale))
            x, _ = layer(x, cos, sin)
    return torch.stack(rows)


def test_qk_clip_caps_the_heads_above_tau_and_leaves_the_rest_alone() -> None:
    model, ids = _big_logit_model()
    before = _maxima(model, ids)
    tau = 5.0
    assert before[0, 0] > tau and (before.flatten()[1:] < tau).all()
    reference = copy.deepcopy(model)
    reports = _step(model, ids, tau)
    _step(reference, ids, None)  # the same step without the clip
    lm = next(r for r in reports if r.tower == "language_model")
    assert lm.clipped_LH[0, 0] and lm.clipped_LH.sum() == 1
    torch.testing.assert_close(lm.max_logit_LH, before, rtol=1e-4, atol=1e-4)  # measured in the forward pass

    after = _maxima(model, ids)
    assert (after <= tau * (1 + 1e-3)).all()
    assert after[0, 0] > tau * 0.99  # capped at tau, not below

    clipped, plain = model.language_model.layers[0].attn, reference.language_model.layers[0].attn
    H, X = clipped.n_heads, clipped.nope_dim + clipped.rope_dim
    q_c, q_p = clipped.q_b_proj.weight.view(H, X, -1), plain.q_b_proj.weight.view(H, X, -1)
    assert torch.equal(q_c[1:], q_p[1:])  # heads under tau: bit for bit
    kv_c = clipped.kv_b_proj.weight.view(H, clipped.nope_dim + clipped.v_dim, -1)
    kv_p = plain.kv_b_proj.weight.view(H, clipped.nope_dim + clipped.v_dim, -1)
    assert torch.equal(kv_c[1:], kv_p[1:]) and torch.equal(
        kv_c[0, clipped.nope_dim :], kv_p[0, clipped.nope_dim :]
    )
    # MLA: the shared rotary key (and the kv latent) is never rescaled
    assert torch.equal(clipped.kv_a_proj.weight, plain.kv_a_proj.weight)
    # and the clipped head: no-rope rows by sqrt(gamma), rotary query rows by gamma
    gamma = tau / lm.max_logit_LH[0, 0]
    torch.testing.assert_close(q_c[0, : clipped.nope_dim], q_p[0, : clipped.nope_dim] * gamma.sqrt())
    torch.testing.assert_close(q_c[0, clipped.nope_dim :], q_p[0, clipped.nope_dim :] * gamma)
    for other_c, other_p in zip(model.language_model.layers[1:], reference.language_model.layers[1:]):
        assert all(torch.equal(a, b) for a, b in zip(other_c.attn.parameters(), other_p.attn.parameters()))


def test_qk_clip_on_standard_attention_scales_query_and_key() -> None:
    torch.manual_seed(0)
    model = KimiK25(to_run_config(compose(["model=tiny-vl"])).model).train()
    attn = model.vision_tower.layers[0].attn
    with torch.no_grad():
        attn.q_proj.weight.mul_(30.0)
        attn.k_proj.weight.mul_(30.0)
    pixels, grid = torch.randn(2 * 4 * 6, 3, 14, 14), torch.tensor([[1, 4, 6], [1, 4, 6]])
    set_measuring(model, True)
    model.vision_tower(pixels, grid)
    tau = 4.0
    maxima = attn.max_logit.clone()
    assert (maxima > tau).any()
    q_before = attn.q_proj.weight.detach().clone()
    (report,) = [r for r in qk_clip_step(model, tau) if r.tower == "vision_tower"]
    gamma = torch.where(report.clipped_LH[0], tau / maxima, torch.ones_like(maxima))
    d = attn.head_dim
    torch.testing.assert_close(
        attn.q_proj.weight.view(attn.n_heads, d, -1),
        q_before.view(attn.n_heads, d, -1) * gamma.sqrt()[:, None, None],
    )
    model.vision_tower(pixels, grid)  # re-measure on the same images
    assert (attn.max_logit <= tau * (1 + 1e-3)).all()


def test_every_parameter_in_exactly_one_group_and_optimizer() -> None:
    model = KimiK25(to_run_config(compose(["model=tiny-vl"])).model)
    groups = build_param_groups(model, 0.1)
    ids = [id(p) for g in groups for p in g.params]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    muon = {n for g in groups if g.name.endswith("/matrices") for n in g.names}
    assert "language_model.lm_head.weight" not in muon and "language_model.embed.weight" not in muon
    assert "vision_tower.pos_emb" not in muon
    assert all(dict(model.named_parameters())[n].ndim >= 2 for n in muon)
    assert "language_model.layers.1.ffn.experts.w1" in muon  # (E, F, D): Muon per expert matrix


def test_wsd_in_tokens() -> None:
    cfg = to_run_config(
        compose(
            [
                "model=tiny",
                "data.batch_size=4",
                "data.seq_len=64",
                "trainer.max_steps=1000",
                "phase.schedule.warmup_tokens=2560",
                "phase.schedule.decay_tokens=25600",
            ]
        )
    )
    assert schedule_steps(cfg) == (10, 100)  # 256 tokens per step
