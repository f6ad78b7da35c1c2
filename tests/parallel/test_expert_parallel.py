"""Expert parallelism on CPU (gloo): an MoE layer split over ranks equals the whole layer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kimi_lab.config.schema import MoEBackend, MoEConfig
from kimi_lab.model.moe.layer import MoELayer
from kimi_lab.parallel.spawn import run_ranks

E, D, F, K, T = 8, 16, 8, 2, 6  # experts, hidden, expert FFN, top-k, tokens per rank

# Routing cases, forced through the selection bias (it chooses experts, it never weights them).
CASES = {
    "random": [],
    "expert 3 gets no token": [3],
    "rank 1 receives nothing": [4, 5, 6, 7],  # EP=2: rank 1 owns experts 4-7
}


def _layer(case: str) -> MoELayer:
    torch.manual_seed(0)
    layer = MoELayer(D, MoEConfig(n_routed_experts=E, top_k=K, expert_ffn_dim=F, backend=MoEBackend.torch))
    layer.router.expert_bias[CASES[case]] = -1e3
    return layer


def _data(world: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(world * T, D, generator=g), torch.randn(world * T, D, generator=g)


def _ep_rank(rank: int, world: int, cases: list[str], ep: int) -> dict[str, dict]:
    from kimi_lab.parallel import expert_parallel

    mesh = expert_parallel.build_mesh(ep, "cpu")
    out = {case: _ep_case(rank, world, case, mesh) for case in cases}
    if world == 2:  # a rank with no tokens at all still serves the other's
        layer = _layer("random")
        expert_parallel.apply(layer, mesh)
        x = _data(world)[0][: T if rank == 0 else 0]
        out["rank 1 sends nothing"] = {"y": layer(x.view(1, -1, D))[0].detach().view(-1, D)}
    return out


def _ep_case(rank: int, world: int, case: str, mesh: object) -> dict:
    from kimi_lab.parallel import expert_parallel

    layer = _layer(case)
    state = expert_parallel.apply(layer, mesh)
    x_all, g_all = _data(world)
    x = x_all[rank * T : (rank + 1) * T].clone().requires_grad_()
    y, _ = layer(x.view(1, T, D))
    (y.view(T, D) * g_all[rank * T : (rank + 1) * T]).sum().backward()
    expert_parallel.reduce_expert_grads(state)  # sum over replicas holding the same experts, / world
    grads = {n: layer.experts.get_parameter(n).grad.clone() for n in ("w1", "w3", "w2")}
    for p in layer.parameters():  # what DDP does to the other parameters: average over ranks
        if p not in state.sharded:
            torch.distributed.all_reduce(p.grad)
            p.grad /= world
    norm = expert_parallel.clip_grad_norm_(list(layer.parameters()), 1e9, state)  # the whole model's
    shard = layer.experts.shard
    assert shard is not None
    return {
        "y": y.detach().view(T, D),
        "gx": x.grad,
        "norm": norm,
        "first": shard.first,
        "n": shard.n_local,
        "grads": grads,
        "weights": {n: layer.experts.get_parameter(n).detach() for n in ("w1", "w3", "w2")},
    }


def _reference(case: str, world: int) -> dict:
    layer = _layer(case)
    x_all, g_all = _data(world)
    x = x_all.clone().requires_grad_()
    y, _ = layer(x.view(1, world * T, D))
    (y.view(-1, D) * g_all).sum().backward()
    counts = torch.bincount(layer.router(x_all).top_idx_TK.flatten(), minlength=E)
    return {
        "y": y.detach().view(-1, D),
        "gx": x.grad,
        "counts": counts,
        "norm": torch.nn.utils.get_total_norm([p.grad for p in layer.parameters()]) / world,
        "grads": {n: layer.experts.get_parameter(n).grad for n in ("w1", "w3", "w2")},
        "weights": {n: layer.experts.get_parameter(n).detach() for n in ("w1", "w3", "w2")},
    }


def test_moe_layer_under_ep2_equals_ep1(tmp_path: Path) -> None:
    per_rank = run_ranks(_ep_rank, 2, tmp_path, list(CASES), 2)  # one pair of processes for all cases
    for case in CASES:
        _check_case(case, [out[case] for out in per_rank])
    empty = [out["rank 1 sends nothing"]["y"] for out in per_rank]
    assert empty[1].shape == (0, D)
    ref, _ = _layer("random")(_data(2)[0][:T].view(1, T, D))
    torch.testing.assert_close(empty[0], ref.detach().view(T, D), rtol=1e-5, atol=1e-6)


def _check_case(case: str, ranks: list[dict]) -> None:
    ref = _reference(case, 2)
    if case != "random":  # the case really happens
        assert (ref["counts"][CASES[case]] == 0).all()
    close = {"rtol": 1e-5, "atol": 1e-6}
    for r, out in enumerate(ranks):
        rows = slice(r * T, (r + 1) * T)
        torch.testing.assert_close(out["y"], ref["y"][rows], **close)
        torch.testing.assert_close(out["gx"], ref["gx"][rows], **close)
        torch.testing.assert_close(out["norm"], ref["norm"], **close)  # gradient clipping's norm
        mine = slice(out["first"], out["first"] + out["n"])
        assert out["n"] == E // 2
        for name in ("w1", "w3", "w2"):
            assert torch.equal(out["weights"][name], ref["weights"][name][mine])  # whole experts, same init
            # every expert's gradient, idle ones included (zero), averaged as DDP averages: / world
            torch.testing.assert_close(out["grads"][name], ref["grads"][name][mine] / 2, **close)
    if case == "expert 3 gets no token":
        assert ranks[0]["grads"]["w1"][3].abs().max() == 0
    if case == "rank 1 receives nothing":
        assert all(ranks[1]["grads"][n].abs().max() == 0 for n in ("w1", "w3", "w2"))


def test_two_by_two_mesh_reduces_expert_grads_over_their_replicas(tmp_path: Path) -> None:
    """4 ranks: experts split over 2 (EP), each half held by 2 ranks that read different data."""
    ranks = [out["random"] for out in run_ranks(_ep_rank, 4, tmp_path, ["random"], 2)]
    ref = _reference("random", 4)
    for r, out in enumerate(ranks):
        torch.testing.assert_close(out["y"], ref["y"][r * T : (r + 1) * T], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out["norm"], ref["norm"], rtol=1e-5, atol=1e-6)
        mine = slice(out["first"], out["first"] + out["n"])
        for name in ("w1", "w3", "w2"):
            torch.testing.assert_close(out["grads"][name], ref["grads"][name][mine] / 4, rtol=1e-5, atol=1e-6)
    assert [out["first"] for out in ranks] == [0, 4, 0, 4]  # EP innermost: neighbours split the experts


def _megablocks_rank(rank: int, world: int) -> dict:
    from kimi_lab.parallel import expert_parallel

    torch.cuda.set_device(rank)
    torch.manual_seed(0)
    cfg = MoEConfig(n_routed_experts=8, top_k=2, expert_ffn_dim=128, backend=MoEBackend.megablocks)
    ref = MoELayer(256, cfg, backend="torch").cuda()
    mb = MoELayer(256, cfg, backend="megablocks").cuda()
    mb.load_state_dict(ref.state_dict())
    expert_parallel.apply(mb, expert_parallel.build_mesh(world, "cuda"))
    g = torch.Generator(device="cuda").manual_seed(rank)
    x = torch.randn(1, 64, 256, device="cuda", generator=g)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y_ref, _ = ref(x)
        y_mb, _ = mb(x)
    return {"ref": y_ref.float().cpu(), "mb": y_mb.float().cpu()}


@pytest.mark.gpu
def test_megablocks_expert_parallel_matches_the_torch_backend(tmp_path: Path) -> None:
    """The same config key drives MegaBlocks' own EP (its expert_parallel_group); 2 GPUs, NCCL."""
    if torch.cuda.device_count() < 2:
        pytest.skip("MegaBlocks expert parallelism needs 2 CUDA GPUs (NCCL)")
    pytest.importorskip("megablocks")
    for out in run_ranks(_megablocks_rank, 2, tmp_path, backend="nccl"):
        torch.testing.assert_close(out["mb"], out["ref"], rtol=2e-2, atol=2e-2)
