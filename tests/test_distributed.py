"""Data parallel on CPU (gloo, 2 processes) against one process with the same global batch."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from kimi_lab.metrics import METRICS_FILE, MOE_LOAD_FILE, TRAIN_LOSS, TRAIN_TOKENS
from tests.conftest import REPO, run_cli


def _run(tiny_overrides: list[str], run: Path, *extra: str) -> pd.DataFrame:
    drop = ("data.batch_size=", "runs_dir=", "data.shuffle_buffer=")
    base = [o for o in tiny_overrides if not o.startswith(drop)]
    res = run_cli(
        "train",
        *base,
        "trainer.max_steps=16",
        "trainer.log_every_n_steps=1",
        "trainer.val_check_interval=100",
        "phase.schedule.warmup_steps=0",
        "data.shuffle_buffer=512",  # decorrelated batches: less document-to-document noise
        f"hydra.run.dir={run}",
        *extra,
        cwd=REPO,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return pd.read_parquet(run / METRICS_FILE)


def test_ddp_two_cpu_processes_match_one_process_with_the_same_global_batch(
    tiny_overrides: list[str], tmp_path: Path
) -> None:
    one = _run(tiny_overrides, tmp_path / "one", "data.batch_size=8")
    two = _run(tiny_overrides, tmp_path / "two", "data.batch_size=4", "trainer=ddp", "trainer.devices=2")
    tokens = two[two.key == TRAIN_TOKENS].sort_values("step").value.tolist()
    assert tokens == [256.0 * (i + 1) for i in range(16)]  # 2 ranks x 4 x 32 tokens per step, both counted
    # Expert loads are global: every layer routes all ranks' tokens, top_k times.
    load = pd.read_parquet(tmp_path / "two" / MOE_LOAD_FILE)
    per_layer = load.groupby(["step", "layer"]).tokens.sum()
    assert (per_layer == 2 * 4 * 32 * 2).all()
    # The same model, init and global batch size; the logged loss is the global batch's
    # (averaged over ranks). The runs read different samples (shards are split over ranks),
    # so the curves can only agree to within sample noise: at this size two seeds of the
    # single-process run differ by ~0.5 nats in mean loss over these steps. Tolerance: 0.3
    # nats on the 16-step mean and 0.4 on the last 5 steps (measured: ~0.05 and ~0.27).
    a = one[one.key == TRAIN_LOSS].sort_values("step").value
    b = two[two.key == TRAIN_LOSS].sort_values("step").value
    assert len(a) == len(b) == 16
    assert a.iloc[0] == pytest.approx(b.iloc[0], abs=0.1)  # same initialisation, same first loss level
    assert abs(a.mean() - b.mean()) < 0.3
    assert abs(a.iloc[-5:].mean() - b.iloc[-5:].mean()) < 0.4
    assert a.iloc[-5:].mean() < a.iloc[0] - 0.3 and b.iloc[-5:].mean() < b.iloc[0] - 0.3  # both learn


def test_submitit_local_multirun_runs_two_jobs(tiny_overrides: list[str], tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    base = [o for o in tiny_overrides if not o.startswith("runs_dir=")]
    res = run_cli(
        "train",
        "--multirun",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=10",
        *base,
        "trainer.max_steps=3",
        "phase.schedule.warmup_steps=0",
        "model.moe.n_routed_experts=4,8",
        f"hydra.sweep.dir={sweep}",
        cwd=REPO,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    import json

    from kimi_lab.metrics import CONFIG_FILE, STATUS_FILE

    experts = []
    for job in ("0", "1"):
        status = json.loads((sweep / job / STATUS_FILE).read_text())
        assert status["status"] == "finished" and status["step"] == 3
        experts.append("n_routed_experts: 4" in (sweep / job / CONFIG_FILE).read_text())
    assert sorted(experts) == [False, True]  # one job per sweep point
    assert (sweep / ".submitit").is_dir()  # really launched through submitit


def test_fsdp2_on_cpu_matches_ddp_and_its_sharded_checkpoint_loads_in_one_process(
    tiny_overrides: list[str], tmp_path: Path
) -> None:
    import torch

    from kimi_lab.decode.loading import load_model, read_checkpoint
    from kimi_lab.metrics import CHECKPOINT_DIR, LAST_CHECKPOINT
    from kimi_lab.model.multimodal import KimiK25

    extra = ("data.batch_size=4", "trainer.devices=2", "trainer.checkpoint_every_n_steps=8")
    ddp = _run(tiny_overrides, tmp_path / "ddp", *extra, "trainer=ddp")
    fsdp = _run(tiny_overrides, tmp_path / "fsdp2", *extra, "trainer=fsdp2")
    a = ddp[ddp.key == TRAIN_LOSS].sort_values("step").value.to_numpy()
    b = fsdp[fsdp.key == TRAIN_LOSS].sort_values("step").value.to_numpy()
    # Same ranks, same shards, same init: sharding changes where the weights live, not the math.
    assert b == pytest.approx(a, abs=2e-4)
    last = tmp_path / "fsdp2" / CHECKPOINT_DIR / LAST_CHECKPOINT
    assert last.is_dir() and (last / ".metadata").is_file()  # saved sharded, one file per rank
    assert len(list(last.glob("*.distcp"))) == 2
    # ...and loadable into a single process: directly, and as one consolidated file
    cfg, state, ckpt = read_checkpoint(last)
    assert ckpt["global_step"] == 16
    model = KimiK25(cfg.model)
    model.load_state_dict(state, strict=True)
    # the loader reads the shards straight into a model (no consolidated copy): same weights
    direct = load_model(last, tokenizer=False).model.state_dict()
    assert direct.keys() == state.keys() and all(torch.equal(direct[k], state[k]) for k in state)
    out = tmp_path / "one.ckpt"
    res = run_cli("consolidate", str(last), str(out), cwd=REPO)
    assert res.returncode == 0, res.stderr[-2000:]
    _, state2, _ = read_checkpoint(out)
    assert state2.keys() == state.keys() and all(torch.equal(state[k], state2[k]) for k in state)
    # resuming the sharded run continues from its step
    res = run_cli(
        "train",
        *[
            o
            for o in tiny_overrides
            if not o.startswith(("data.batch_size=", "runs_dir=", "data.shuffle_buffer="))
        ],
        *extra,
        "trainer=fsdp2",
        "trainer.max_steps=18",
        "trainer.log_every_n_steps=1",
        "trainer.val_check_interval=100",
        "phase.schedule.warmup_steps=0",
        "data.shuffle_buffer=512",
        f"hydra.run.dir={tmp_path / 'fsdp2'}",
        "ckpt_path=auto",
        cwd=REPO,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    m = pd.read_parquet(tmp_path / "fsdp2" / METRICS_FILE)
    assert sorted(m[m.key == TRAIN_LOSS].step.unique())[-2:] == [16, 17]


def test_fsdp2_runs_muonclip_as_ddp_does(tiny_overrides: list[str], tmp_path: Path) -> None:
    """Muon orthogonalises whole matrices under FSDP2 too (gathered where rows are sharded, in place
    where only experts are), and QK-Clip rescales each rank's rows: the same run as under DDP."""
    from kimi_lab.metrics import ATTN_LOGITS_FILE

    extra = (
        "data.batch_size=4",
        "trainer.devices=2",
        "phase.optim.name=muonclip",
        "phase.optim.qk_clip_tau=0.08",  # tiny logits here are 0.06-0.14: about half the heads clip
    )
    ddp = _run(tiny_overrides, tmp_path / "ddp", *extra, "trainer=ddp")
    fsdp = _run(tiny_overrides, tmp_path / "fsdp2", *extra, "trainer=fsdp2")
    a = ddp[ddp.key == TRAIN_LOSS].sort_values("step").value.to_numpy()
    b = fsdp[fsdp.key == TRAIN_LOSS].sort_values("step").value.to_numpy()
    assert len(a) == 16 and b == pytest.approx(a, abs=2e-4)
    for run in ("ddp", "fsdp2"):
        clipped = pd.read_parquet(tmp_path / run / ATTN_LOGITS_FILE).clipped
        assert clipped.any()  # QK-Clip really acted on the (sharded) weights
