"""FSDP2 x expert parallelism on one mesh (CPU, gloo): training steps equal one process's, and
sharded checkpoints move between layouts (4 ranks EP=2 -> 2 ranks EP=1 -> 4 ranks EP=4).

Every rank runs the parts the trainer runs for a step (the model built on the meta device,
``parallelize``, ``materialise_``, MuonClip, clipping by the whole model's norm, router biases
by global counts), on its quarter of one global batch; the reference is one process on the
whole batch with the same initial weights."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kimi_lab.model.init import initialise_
from kimi_lab.parallel.spawn import run_ranks
from tests.parallel.models import SMALL_MOE

SEED, B, T, STEPS, TAU = 3, 8, 16, 4, 0.032  # TAU: the initial logits are 0.029-0.035
CFG = replace(SMALL_MOE, n_layers=2, moe=replace(SMALL_MOE.moe, bias_update_rate=0.01))


def _batch(step: int) -> torch.Tensor:
    return torch.randint(0, CFG.vocab_size, (B, T + 1), generator=torch.Generator().manual_seed(100 + step))


def _model(meta: bool):
    from kimi_lab.model.multimodal import KimiK25

    with torch.device("meta") if meta else contextlib.nullcontext():
        return KimiK25(CFG)


def _optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    from kimi_lab.optim.groups import build_param_groups
    from kimi_lab.optim.muon import MuonAdamW

    groups = [
        {
            "params": g.params,
            "weight_decay": g.weight_decay,
            "use_muon": g.name.endswith("/matrices"),
            "fused_row_parts": g.fused_row_parts,
        }
        for g in build_param_groups(model, 0.1)
    ]
    return MuonAdamW(groups, lr=0.02)


def _step(
    model: torch.nn.Module, opt: torch.optim.Optimizer, tokens: torch.Tensor, clip
) -> tuple[float, float, float]:
    """(loss, gradient norm before clipping, heads QK-Clip rescaled): Muon and AdamW hide a gradient's
    scale, the norm shows it."""
    from kimi_lab.model.moe.balance import update_router_biases
    from kimi_lab.optim.qk_clip import qk_clip_step

    logits = model(tokens[:, :-1]).logits
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
    loss.backward()
    norm = clip(list(model.parameters()), 0.5)
    opt.step()
    opt.zero_grad()
    clipped = sum(int(r.clipped_LH.sum()) for r in qk_clip_step(model, TAU))
    update_router_biases(model, CFG.moe.bias_update_rate)
    return float(loss.detach()), float(norm), float(clipped)


def _full(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
        for k, v in model.state_dict().items()
    }


def _reference(device: str = "cpu") -> tuple[list[float], dict[str, torch.Tensor]]:
    from kimi_lab.optim.qk_clip import set_measuring

    model = _model(meta=False)
    initialise_(model, CFG, SEED)
    set_measuring(model, True)
    opt = _optimizer(model)
    model.to(device)
    clip = torch.nn.utils.clip_grad_norm_
    losses = [_step(model, opt, _batch(s).to(device), clip) for s in range(STEPS)]
    return losses, {k: v.cpu() for k, v in _full(model).items()}


def _sharded(world: int, ep: int, device: str = "cpu"):
    from kimi_lab.model.init import materialise_
    from kimi_lab.optim.qk_clip import set_measuring
    from kimi_lab.parallel.fsdp import parallelize
    from kimi_lab.parallel.mesh import ParallelDims

    model = _model(meta=True)
    parallelize(model, ParallelDims(world, ep).build(torch.device(device).type))
    materialise_(model, CFG, device, SEED)
    set_measuring(model, True)
    return model, _optimizer(model)


def _save(model: torch.nn.Module, opt: torch.optim.Optimizer, folder: Path) -> None:
    """What Lightning's ModelParallelStrategy does (trainer=fsdp2): every rank writes its shards."""
    from lightning.fabric.strategies.model_parallel import _distributed_checkpoint_save
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    state = {"state_dict": get_model_state_dict(model), "optimizer_0": get_optimizer_state_dict(model, opt)}
    _distributed_checkpoint_save(state, folder)
    if torch.distributed.get_rank() == 0:
        torch.save({}, folder / "meta.pt")


def _load(model: torch.nn.Module, opt: torch.optim.Optimizer, folder: Path) -> None:
    from lightning.fabric.strategies.model_parallel import _load_checkpoint

    _load_checkpoint(folder, {"state_dict": model, "optimizer_0": opt}, optimizer_states_from_list=True)


def _full_optimizer(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, dict[str, torch.Tensor]]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    state = get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True))["state"]
    return {k: {n: torch.as_tensor(v).clone() for n, v in s.items()} for k, s in state.items()}


def _train_rank(rank: int, world: int, ep: int, steps: list[int], load: str | None, save: str) -> dict:
    """Resume from ``load`` (a checkpoint of another layout), run ``steps``, save to ``save``."""
    from kimi_lab.parallel.fsdp import clip_grad_norm_

    model, opt = _sharded(world, ep)
    loaded = {}
    if load is not None:
        _load(model, opt, Path(load))
        loaded = {"weights": _full(model), "optimizer": _full_optimizer(model, opt)}
    rows = slice(rank * B // world, (rank + 1) * B // world)
    losses = []
    for s in steps:
        loss, norm, clipped = _step(model, opt, _batch(s)[rows], clip_grad_norm_)
        total = torch.tensor(loss)
        torch.distributed.all_reduce(total)
        losses.append((float(total) / world, norm, clipped))
    _save(model, opt, Path(save))
    experts = model.language_model.layers[1].ffn.experts.w1
    return {
        "losses": losses,
        "loaded": loaded,
        "weights": _full(model),
        "optimizer": _full_optimizer(model, opt),
        "local_experts": tuple(experts.to_local().shape),
    }


def _assert_state_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], dict):
            _assert_state_equal(a[k], b[k])
        else:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_fsdp2_by_ep_trains_as_one_process_and_its_checkpoints_reshard(tmp_path: Path) -> None:
    """4 ranks FSDP2 x EP=2 (2 steps) -> 2 ranks EP=1 (1 step) -> 4 ranks EP=4 (1 step)."""
    ref, ref_weights = _reference()
    a, b, c = (str(tmp_path / n) for n in ("a", "b", "c"))
    first = run_ranks(_train_rank, 4, tmp_path / "run1", 2, [0, 1], None, a)
    second = run_ranks(_train_rank, 2, tmp_path / "run2", 1, [2], a, b)
    third = run_ranks(_train_rank, 4, tmp_path / "run3", 4, [3], b, c)
    # EP=2 over 4 ranks: 4 whole experts' rows per EP rank, halved again by FSDP2; EP=1: FSDP2
    # alone cuts the 8 experts over 2 ranks; EP=4: 2 experts per rank, FSDP2 over 1
    assert [r["local_experts"] for r in first] == [(2, 16, 32)] * 4
    assert [r["local_experts"] for r in second] == [(4, 16, 32)] * 2
    assert [r["local_experts"] for r in third] == [(2, 16, 32)] * 4
    for prev, run in ((first, second), (second, third)):
        for r in run:  # weights and optimizer state read back exactly, in the new layout
            _assert_state_equal(
                r["loaded"], {"weights": prev[0]["weights"], "optimizer": prev[0]["optimizer"]}
            )
    # the loss curve (each step's gradient norm and QK-Clip's decisions too) goes on as one
    # process's uninterrupted run
    assert sum(r[2] for r in ref) > 0  # QK-Clip rescaled heads (each rank its rows of them)
    losses = first[0]["losses"] + second[0]["losses"] + third[0]["losses"]
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref), rtol=1e-5, atol=1e-5)
    for k, v in ref_weights.items():
        torch.testing.assert_close(third[0]["weights"][k], v, rtol=1e-4, atol=1e-5, msg=k)
    start = _model(meta=False)
    initialise_(start, CFG, SEED)
    moved = [k for k, v in start.state_dict().items() if (ref_weights[k] - v).abs().max() > 1e-3]
    assert len(moved) > len(ref_weights) // 2  # the steps did something


def _gpu_rank(rank: int, world: int) -> list[tuple[float, float]]:
    from kimi_lab.parallel.fsdp import clip_grad_norm_

    torch.cuda.set_device(rank)
    model, opt = _sharded(world, world, f"cuda:{rank}")
    rows = slice(rank * B // world, (rank + 1) * B // world)
    losses = []
    for s in range(STEPS):
        loss, norm, clipped = _step(model, opt, _batch(s)[rows].cuda(), clip_grad_norm_)
        total = torch.tensor(loss, device="cuda")
        torch.distributed.all_reduce(total)
        losses.append((float(total) / world, norm, clipped))
    return losses


@pytest.mark.gpu
def test_fsdp2_by_ep_on_two_gpus_trains_as_one_gpu(tmp_path: Path) -> None:
    """The same code on NCCL: 2 GPUs, FSDP2 x EP=2, against one GPU (fp32)."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA GPUs")
    ref, _ = _reference("cuda")
    for losses in run_ranks(_gpu_rank, 2, tmp_path, backend="nccl"):
        torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_kimi_lab_train_fsdp2_by_ep_resumes_under_hsdp_and_starts_from_its_folder(
    tiny_overrides: list[str], tmp_path: Path
) -> None:
    """Through ``kimi-lab train`` (Lightning, 2-4 gloo processes): FSDP2 x EP=2 writes a sharded
    checkpoint; ``ckpt_path=auto`` resumes it as HSDP (2 replicas x 2 shards, EP=2) on 4 ranks;
    ``consolidate`` joins it; a new phase starts from the folder (``phase.init_from``) under EP=1."""
    import pandas as pd

    from kimi_lab.decode.loading import read_checkpoint
    from kimi_lab.metrics import CHECKPOINT_DIR, LAST_CHECKPOINT, METRICS_FILE, TRAIN_LOSS
    from tests.conftest import REPO, run_cli

    base = [o for o in tiny_overrides if not o.startswith("runs_dir=")]
    common = [*base, "trainer=fsdp2", "trainer.log_every_n_steps=1", "phase.schedule.warmup_steps=0"]
    common += [
        "phase.schedule.decay_fraction=0",
        "trainer.val_check_interval=100",
        "phase.optim.name=muonclip",
    ]
    run = tmp_path / "run"

    def train(*extra: str, where: Path = run) -> None:
        res = run_cli("train", *common, *extra, f"hydra.run.dir={where}", cwd=REPO, timeout=900)
        assert res.returncode == 0, res.stderr[-3000:]

    train(
        "trainer.devices=2",
        "model.moe.expert_parallel=2",
        "trainer.max_steps=2",
        "trainer.checkpoint_every_n_steps=2",
    )
    last = run / CHECKPOINT_DIR / LAST_CHECKPOINT
    assert last.is_dir() and len(list(last.glob("*.distcp"))) == 2
    _, before, _ = read_checkpoint(last)
    train(
        "trainer.devices=4",
        "trainer.dp_replicate=2",
        "model.moe.expert_parallel=2",
        "trainer.max_steps=4",
        "trainer.checkpoint_every_n_steps=2",  # as before: Lightning keys its checkpoint state by it
        "trainer.activation_checkpointing=full",
        "ckpt_path=auto",
    )
    m = pd.read_parquet(run / METRICS_FILE)
    assert sorted(m[m.key == TRAIN_LOSS].step.unique()) == [0, 1, 2, 3]
    out = tmp_path / "one.ckpt"
    assert run_cli("consolidate", str(last), str(out), cwd=REPO).returncode == 0
    _, after, ckpt = read_checkpoint(out)
    assert ckpt["global_step"] == 4 and after.keys() == before.keys()
    assert (
        after["language_model.layers.1.ffn.experts.w1"].shape
        == before["language_model.layers.1.ffn.experts.w1"].shape
    )
    train("trainer.devices=2", "trainer.max_steps=1", f"phase.init_from={last}", where=tmp_path / "next")
    log = (tmp_path / "next" / "train.log").read_text()
    assert f"initialised from {last}" in log and "memory plan: model tiny" in log
