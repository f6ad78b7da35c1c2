"""Training under expert parallelism (2 CPU processes, gloo): the same run as without it, checkpoints
that any layout loads, and a killed run that resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from kimi_lab.metrics import CHECKPOINT_DIR, LAST_CHECKPOINT, METRICS_FILE, MOE_LOAD_FILE, TRAIN_LOSS
from tests.conftest import REPO, run_cli

STEPS = 16


def _overrides(tokenizer: Path, shards: Path, *extra: str) -> list[str]:
    return [
        "model=tiny",
        f"data.sources.text.path={shards}",
        f"data.tokenizer={tokenizer}",
        "data.seq_len=32",
        "data.val_batches=2",
        "logger=none",
        "trainer.progress_bar=false",
        "trainer.precision=32-true",
        "trainer.limit_val_batches=2",
        f"trainer.max_steps={STEPS}",
        "trainer.log_every_n_steps=1",
        "trainer.val_check_interval=100",
        "trainer.checkpoint_every_n_steps=8",
        "phase.schedule.warmup_steps=0",
        "phase.schedule.decay_fraction=0",  # a resume may stop early (max_steps) without a new schedule
        "data.shuffle_buffer=512",  # as the DDP test: decorrelated batches
        *extra,
    ]


EP2 = ("trainer=ddp", "trainer.devices=2", "data.batch_size=4", "model.moe.expert_parallel=2")


def _train(args: list[str], run: Path) -> pd.Series:
    res = run_cli("train", *args, f"hydra.run.dir={run}", cwd=REPO, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    return _losses(run)


def _losses(run: Path) -> pd.Series:
    m = pd.read_parquet(run / METRICS_FILE)
    return m[m.key == TRAIN_LOSS].drop_duplicates("step", keep="last").set_index("step").value.sort_index()


@pytest.fixture(scope="module")
def ep_run(tiny_tokenizer: Path, tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted EP=2 x DP=2 run (2 processes), shared by the tests of this file."""
    run = tmp_path_factory.mktemp("ep") / "ep2"
    _train(_overrides(tiny_tokenizer, tiny_shards, *EP2), run)
    return run


def test_ep2_training_matches_ddp_and_one_process_with_global_expert_loads(
    ep_run: Path, tiny_tokenizer: Path, tiny_shards: Path, tmp_path: Path
) -> None:
    base = _overrides(tiny_tokenizer, tiny_shards)
    one = _train([*base, "data.batch_size=8"], tmp_path / "one")
    ddp = _train([*base, *EP2[:-1]], tmp_path / "ddp")  # the same 2 ranks and data, every expert everywhere
    ep = _losses(ep_run)
    assert len(one) == len(ddp) == len(ep) == STEPS
    # Same ranks, same batches, same init: splitting the experts changes where they run, not the math.
    assert ep.to_numpy() == pytest.approx(ddp.to_numpy(), abs=2e-4)
    # ...and against one process with the same global batch, the DDP test's tolerances.
    assert ep.iloc[0] == pytest.approx(one.iloc[0], abs=0.1)
    assert abs(one.mean() - ep.mean()) < 0.3
    assert abs(one.iloc[-5:].mean() - ep.iloc[-5:].mean()) < 0.4
    assert ep.iloc[-5:].mean() < ep.iloc[0] - 0.3  # it learns
    # Expert loads are global: each layer routed both ranks' 4 x 32 tokens, top-2.
    load = pd.read_parquet(ep_run / MOE_LOAD_FILE)
    assert (load.groupby(["step", "layer"]).tokens.sum() == 2 * 4 * 32 * 2).all()
    assert load.expert.nunique() == 8  # every expert reported, not only one rank's half


def test_ep_checkpoints_are_canonical_and_move_between_layouts_and_a_killed_run_resumes(
    ep_run: Path, tiny_tokenizer: Path, tiny_shards: Path, tmp_path: Path
) -> None:
    from kimi_lab.decode.loading import load_model, read_checkpoint
    from kimi_lab.model.multimodal import KimiK25

    # 1. The EP=2 checkpoint holds every expert whole: one process loads it, strictly.
    last = ep_run / CHECKPOINT_DIR / LAST_CHECKPOINT
    cfg, state, ckpt = read_checkpoint(last)
    assert state["language_model.layers.1.ffn.experts.w1"].shape == (8, 32, 64)
    adam = ckpt["optimizer_states"][0]["state"]
    assert any(v["exp_avg"].shape == (8, 32, 64) for v in adam.values())  # expert moments whole too
    KimiK25(cfg.model).load_state_dict(state, strict=True)
    loaded = load_model(last, tokenizer=False).model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    res = run_cli("export-hf", str(last), str(tmp_path / "hf"), cwd=REPO)  # a transformers folder
    assert res.returncode == 0 and (tmp_path / "hf" / "config.json").is_file(), res.stderr[-2000:]

    # 2. Kill an EP=2 run after its step-8 checkpoint, resume it under EP=1, then under EP=2 again.
    args = _overrides(tiny_tokenizer, tiny_shards, *EP2)
    run = tmp_path / "killed"
    log = tmp_path / "killed.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kimi_lab.cli", "train", *args, f"hydra.run.dir={run}"],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
    deadline = time.time() + 600
    while not (run / CHECKPOINT_DIR / LAST_CHECKPOINT).exists():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.time() < deadline, "no checkpoint at step 8"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # both ranks, no cleanup, no final checkpoint
    proc.wait()
    one_layout = [a for a in args if not a.startswith("model.moe.expert_parallel")]
    _train([*one_layout, "trainer.max_steps=12", "ckpt_path=auto"], run)  # EP=1 on 2 ranks
    _, state12, ckpt12 = read_checkpoint(run / CHECKPOINT_DIR / LAST_CHECKPOINT)
    assert ckpt12["global_step"] == 12 and state12["language_model.layers.1.ffn.experts.w1"].shape == (
        8,
        32,
        64,
    )
    resumed = _train([*args, "ckpt_path=auto"], run)  # back to EP=2, to the end
    whole = _losses(ep_run)
    # weights, optimizer moments, schedule, router biases and data position all carried over
    assert list(resumed.loc[8:].index) == list(range(8, STEPS))
    assert resumed.loc[8:].to_numpy() == pytest.approx(whole.loc[8:].to_numpy(), abs=2e-4)
    _, final, _ = read_checkpoint(run / CHECKPOINT_DIR / LAST_CHECKPOINT)
    for k, v in state.items():
        if v.is_floating_point():
            assert (final[k] - v).norm() <= 1e-3 * v.norm() + 1e-6, k
