"""End-to-end: experiments run, the run directory is complete, resume continues the run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from kimi_lab.config import compose, to_run_config, validate_run
from kimi_lab.metrics import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    DATA_IMAGE_TOKENS,
    DATA_PAD_TOKENS,
    DATA_VISION_RATIO,
    LAST_CHECKPOINT,
    METRICS_FILE,
    MOE_LOAD_FILE,
    STATUS_FILE,
    TRAIN_LOSS,
    TRAIN_LR,
    TRAIN_TOKENS,
    VAL_LOSS,
    WANDB_ID_FILE,
)
from kimi_lab.model.multimodal import KimiK25
from kimi_lab.optim.schedule import wsd_multiplier
from kimi_lab.tracking.checkpoint_io import latest_checkpoint
from kimi_lab.train import train
from tests.conftest import REPO, run_cli, tiny_run_overrides

EXPERIMENTS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_runs_once_with_fast_dev_run(
    experiment: str,
    tiny_overrides,
    tiny_shards,
    image_code_shards,
    video_shards,
    interleaved_shards,
    tmp_path,
) -> None:
    """Each experiment, shrunk (tiny model of its kind, tiny shards for each of its sources), runs a step."""
    shards = {
        "text": tiny_shards,
        "image_code": image_code_shards,
        "video": video_shards,
        "interleaved": interleaved_shards,
    }
    full = to_run_config(compose([f"experiment={experiment}"]))
    shrink = [o for o in tiny_overrides if not o.startswith(("model=", "data.sources."))]
    shrink.append("model=tiny-vl" if full.model.vision is not None else "model=tiny")
    shrink += [f"data.sources.{name}.path={shards[name]}" for name in full.data.sources]
    if full.model.vision is not None:
        shrink += ["data.seq_len=96", "data.vision.max_patches=144"]
    dcfg = compose([f"experiment={experiment}", *shrink, "trainer.fast_dev_run=true"])
    cfg = to_run_config(dcfg)
    validate_run(cfg)
    metrics = train(cfg, tmp_path / "run", OmegaConf.to_container(dcfg, resolve=True))
    assert torch.isfinite(torch.tensor(metrics[TRAIN_LOSS]))


def test_cli_run_writes_the_run_directory_contract(tiny_overrides: list[str], tmp_path: Path) -> None:
    overrides = [o for o in tiny_overrides if not o.startswith("logger=")]
    res = run_cli(
        "train",
        *overrides,
        "logger=wandb",
        "experiment=quickstart",
        "trainer.max_steps=12",
        "trainer.log_every_n_steps=3",
        "trainer.val_check_interval=6",
        "trainer.checkpoint_every_n_steps=6",
        "phase.schedule.warmup_steps=2",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    run_dir = Path(res.stdout.strip().splitlines()[-1].removeprefix("run directory: "))
    assert run_dir.parent == tmp_path / "runs" / "quickstart"

    assert OmegaConf.load(run_dir / CONFIG_FILE).model.name == "tiny"
    metrics = pd.read_parquet(run_dir / METRICS_FILE)
    assert {TRAIN_LOSS, VAL_LOSS, TRAIN_LR}.issubset(set(metrics.key))
    assert sorted(metrics[metrics.key == TRAIN_LOSS].step) == [0, 2, 5, 8, 11]  # the first step, every 3rd

    load = pd.read_parquet(run_dir / MOE_LOAD_FILE)
    assert list(load.columns) == ["step", "layer", "expert", "tokens", "bias"]
    n_moe_layers, n_experts = 1, 8  # tiny: 2 layers, the first dense
    assert set(load.layer) == {1}  # the model's layer index, as attn_logits.parquet numbers layers
    for _step, rows in load.groupby("step"):
        assert len(rows) == n_moe_layers * n_experts
        assert rows.tokens.sum() == 4 * 32 * 2  # batch x seq_len x top_k: dropless, every token routed
    assert sorted(load.step.unique()) == [0, 2, 5, 8, 11]

    # the two newest step files, and last.ckpt a link to the newest: no second full copy
    ckpts = run_dir / CHECKPOINT_DIR
    assert sorted(p.name for p in ckpts.iterdir()) == [
        LAST_CHECKPOINT,
        "step-0000006.ckpt",
        "step-0000012.ckpt",
    ]
    assert (ckpts / LAST_CHECKPOINT).is_symlink() and (
        ckpts / LAST_CHECKPOINT
    ).resolve().name == "step-0000012.ckpt"
    assert json.loads((run_dir / STATUS_FILE).read_text())["status"] == "finished"
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    run_id = (run_dir / WANDB_ID_FILE).read_text().strip()
    assert offline and offline[0].name.endswith(run_id)


def test_killed_run_resumes_with_ckpt_path_auto(tiny_overrides: list[str], tmp_path: Path) -> None:
    overrides = [o for o in tiny_overrides if not o.startswith("logger=")] + [
        "logger=wandb",
        "experiment=quickstart",
        "trainer.max_steps=40",
        "trainer.log_every_n_steps=2",
        "trainer.val_check_interval=10",
        "trainer.checkpoint_every_n_steps=10",
        "phase.schedule.warmup_steps=4",
        "model.moe.bias_update_rate=0.01",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "kimi_lab.cli", "train", *overrides],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    root = tmp_path / "runs" / "quickstart"
    deadline = time.time() + 240
    while not list(root.glob(f"*/{CHECKPOINT_DIR}/step-0000010.ckpt")):
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.time() < deadline, "no checkpoint at step 10"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # no cleanup, no final checkpoint
    proc.wait()
    run_dir = next(root.iterdir())
    first_id = (run_dir / WANDB_ID_FILE).read_text().strip()
    # the kill may land between the step file and last.ckpt: resume takes the newest
    newest = latest_checkpoint(run_dir / CHECKPOINT_DIR)
    assert newest is not None
    ckpt = torch.load(newest, map_location="cpu", weights_only=False)
    ckpt_step = ckpt["global_step"]
    bias_key = "model.language_model.layers.1.ffn.router.expert_bias"
    assert 10 <= ckpt_step < 40, "the kill must land between checkpoints, before the end"
    assert ckpt["state_dict"][bias_key].abs().sum() > 0

    res = run_cli("train", *overrides, "ckpt_path=auto", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"resuming {run_dir}" in res.stdout and list(root.iterdir()) == [run_dir]
    assert "KimiDataModule" in ckpt  # the data position travels with the checkpoint...
    assert "data position restored" in res.stdout + res.stderr  # ...and comes back

    status = json.loads((run_dir / STATUS_FILE).read_text())
    assert status["status"] == "finished" and status["step"] == 40
    metrics = pd.read_parquet(run_dir / METRICS_FILE)
    loss = metrics[metrics.key == TRAIN_LOSS].set_index("step").value
    assert list(loss.index) == [0, *range(1, 40, 2)]  # every logged step exactly once: no gap, no repeat
    lr = metrics[metrics.key == TRAIN_LR].set_index("step").value
    for step, value in lr.items():  # the schedule resumed where it was, not from warmup
        assert value == pytest.approx(3e-3 * wsd_multiplier(step + 1, 40, 4, 8, 0.1), rel=1e-5)
    before, after = loss[loss.index < ckpt_step], loss[loss.index >= ckpt_step]
    # Continued from the trained weights, not from scratch: the first loss after the resume is
    # nearer the last one before the kill than the untrained first one (wherever the kill landed).
    assert abs(after.iloc[0] - before.iloc[-1]) < abs(after.iloc[0] - loss.iloc[0])

    load = pd.read_parquet(run_dir / MOE_LOAD_FILE)
    first_after = load[load.step == load[load.step >= ckpt_step].step.min()].sort_values("expert")
    drift = (torch.tensor(first_after.bias.values) - ckpt["state_dict"][bias_key]).abs().max()
    assert drift <= 2 * 0.01 * 2 + 1e-6  # biases continued from the checkpoint (two updates at most)

    assert (run_dir / WANDB_ID_FILE).read_text().strip() == first_id
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(r.name.endswith(first_id) for r in runs)


def test_config_errors_are_one_line(tiny_overrides: list[str], tmp_path: Path) -> None:
    res = run_cli("train", *tiny_overrides, "model.moe.top_k=99", cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1] == (
        "error: model.moe.top_k=99 must be between 1 and model.moe.n_routed_experts=8"
    )
    before = sorted((tmp_path / "runs").rglob("*"))
    # a typo, and the + that Hydra would advise for it: refused before anything runs, with the fix
    for typo, fix in (
        ("experimnt=quickstart", "experiment=quickstart"),
        ("+model.moe.top_kk=2", "model.moe.top_k=2"),
    ):
        res = run_cli("train", *tiny_overrides, typo, cwd=tmp_path)
        assert res.returncode == 2
        assert res.stderr.strip().splitlines() == [f"error: {typo}: " + res.stderr.split(": ", 2)[2].strip()]
        assert res.stderr.strip().endswith(f"did you mean {fix}?")
    assert sorted((tmp_path / "runs").rglob("*")) == before  # nothing trained, no run folder


def test_missing_data_is_a_one_line_error(tiny_overrides: list[str], tmp_path: Path) -> None:
    overrides = [o for o in tiny_overrides if not o.startswith("data.sources.text.path=")]
    res = run_cli("train", *overrides, f"data.sources.text.path={tmp_path / 'no_shards'}", cwd=tmp_path)
    assert res.returncode == 2, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert (
        last.startswith("error: data.sources.text.path=")
        and "no_shards" in last
        and "Traceback" not in res.stderr
    )


def test_multirun_sweeps_expert_counts(tiny_overrides: list[str], tmp_path: Path) -> None:
    res = run_cli(
        "train",
        "--multirun",
        *tiny_overrides,
        "experiment=quickstart",
        "model.moe.n_routed_experts=4,8",
        "trainer.max_steps=4",
        "trainer.log_every_n_steps=2",
        "trainer.val_check_interval=4",
        "trainer.checkpoint_every_n_steps=4",
        "phase.schedule.warmup_steps=1",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = sorted((tmp_path / "runs" / "quickstart" / "multirun").glob("*/[0-9]*"))
    assert [j.name for j in jobs] == ["0", "1"]
    experts = [OmegaConf.load(j / CONFIG_FILE).model.moe.n_routed_experts for j in jobs]
    assert experts == [4, 8]
    for job, n in zip(jobs, experts):
        load = pd.read_parquet(job / MOE_LOAD_FILE)
        assert sorted(load.expert.unique()) == list(range(n))


def test_vision_data_needs_a_vision_model(
    tiny_overrides: list[str], image_code_shards: Path, tmp_path: Path
) -> None:
    res = run_cli(
        "train",
        *tiny_overrides,
        f"+data.sources.pictures={{path:{image_code_shards}}}",
        "data.seq_len=96",
        "data.vision.max_patches=144",
        "trainer.max_steps=2",
        "phase.schedule.warmup_steps=1",
        cwd=tmp_path,
    )
    assert res.returncode == 2, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: data.sources pictures hold images or video") and "vision tower" in last


def _vl_overrides(
    tiny_overrides, tiny_shards, image_code_shards, video_shards, interleaved_shards
) -> list[str]:
    base = [o for o in tiny_overrides if not o.startswith(("model=", "data.sources.", "data.seq_len="))]
    return [
        *base,
        "experiment=quickstart_vl",
        "model=tiny-vl",
        f"data.sources.text.path={tiny_shards}",
        f"data.sources.image_code.path={image_code_shards}",
        f"data.sources.video.path={video_shards}",
        f"data.sources.interleaved.path={interleaved_shards}",
        "data.seq_len=96",
        "data.vision.max_patches=144",
        "data.shuffle_buffer=16",
        "phase.optim.lr=5e-3",
    ]


def _fit(overrides: list[str], run_dir: Path) -> pd.DataFrame:
    from kimi_lab.train import adopt_init_model

    dcfg = compose(overrides)
    cfg = adopt_init_model(to_run_config(dcfg))
    validate_run(cfg)
    train(cfg, run_dir, OmegaConf.to_container(dcfg, resolve=True))
    return pd.read_parquet(run_dir / METRICS_FILE)


@pytest.fixture(scope="module")
def joint_run(
    tiny_tokenizer, tiny_shards, image_code_shards, video_shards, interleaved_shards, tmp_path_factory
) -> tuple[pd.DataFrame, Path]:
    """One 60-step joint text-vision run (padding varies per step), shared by the tests below."""
    tmp = tmp_path_factory.mktemp("joint")
    base = tiny_run_overrides(tiny_tokenizer, tiny_shards, tmp)
    overrides = _vl_overrides(base, tiny_shards, image_code_shards, video_shards, interleaved_shards)
    run_dir = tmp / "run"
    m = _fit(
        [
            *overrides,
            "trainer.max_steps=60",
            "trainer.val_check_interval=20",
            "phase.schedule.warmup_steps=5",
            "trainer.log_every_n_steps=1",
            "data.val_batches=3",
            "trainer.limit_val_batches=3",
        ],
        run_dir,
    )
    return m, run_dir


def test_joint_quickstart_text_and_caption_losses_fall(joint_run: tuple[pd.DataFrame, Path]) -> None:
    m, _ = joint_run
    for key, margin in (("val/text/loss", 0.3), ("val/image_code/loss", 0.3), ("val/video/loss", 0.0)):
        curve = m[m.key == key].sort_values("step").value.tolist()
        assert len(curve) == 3 and curve[-1] < curve[0] - margin, (key, curve)
    vision = m[m.key == DATA_VISION_RATIO].value
    assert 0.05 < vision.mean() < 0.4  # quickstart_mix: a fifth of the tokens from vision sources
    assert m[m.key == DATA_IMAGE_TOKENS].value.sum() > 0  # images reached the model in training


def _per_step(m: pd.DataFrame, key: str) -> pd.Series:
    return m[m.key == key].drop_duplicates("step", keep="last").set_index("step").value.sort_index()


def test_train_tokens_is_the_running_total_of_real_tokens(joint_run: tuple[pd.DataFrame, Path]) -> None:
    m, _ = joint_run
    pad = _per_step(m, DATA_PAD_TOKENS)
    assert pad.gt(0).any() and pad.nunique() > 1  # the property needs steps with different padding
    real = 4 * 96 - pad  # data.batch_size x data.seq_len inputs per step, one rank
    tokens = _per_step(m, TRAIN_TOKENS)
    assert list(tokens.index) == list(range(60))
    assert tokens.to_numpy() == pytest.approx(real.cumsum().to_numpy())


def test_expert_loads_count_real_tokens_only(joint_run: tuple[pd.DataFrame, Path]) -> None:
    m, run_dir = joint_run
    real = 4 * 96 - _per_step(m, DATA_PAD_TOKENS)
    load = pd.read_parquet(run_dir / MOE_LOAD_FILE).groupby(["step", "layer"]).tokens.sum()
    top_k = to_run_config(compose(["model=tiny-vl"])).model.moe.top_k
    for (step, layer), routed in load.items():
        assert routed == real[step] * top_k, (step, layer)


def test_k25_stages_freeze_what_they_say_and_chain(
    tiny_overrides, tiny_shards, image_code_shards, video_shards, interleaved_shards, tmp_path
) -> None:
    overrides = _vl_overrides(
        tiny_overrides, tiny_shards, image_code_shards, video_shards, interleaved_shards
    )
    short = [
        "trainer.max_steps=4",
        "trainer.val_check_interval=4",
        "trainer.checkpoint_every_n_steps=4",
        "phase.schedule.warmup_steps=1",
        "data.val_batches=1",
        "trainer.limit_val_batches=1",
    ]
    stage1 = tmp_path / "vit"
    _fit([*overrides, *short, "phase=pretrain_vit", "phase.optim.lr=5e-3"], stage1)
    ckpt1 = stage1 / CHECKPOINT_DIR / LAST_CHECKPOINT
    stage2 = tmp_path / "align"
    _fit(
        [*overrides, *short, "phase=pretrain_align", "phase.optim.lr=5e-3", f"phase.init_from={ckpt1}"],
        stage2,
    )
    before = torch.load(ckpt1, map_location="cpu", weights_only=False)["state_dict"]
    after = torch.load(stage2 / CHECKPOINT_DIR / LAST_CHECKPOINT, map_location="cpu", weights_only=False)[
        "state_dict"
    ]

    def changed(prefix: str) -> bool:
        return any(
            not torch.equal(before[k], after[k])
            for k in before
            if k.startswith(prefix) and before[k].is_floating_point()
        )

    # stage 2 (projector-only alignment) started from stage 1's weights and moved only the projector
    assert changed("model.projector.")
    assert not changed("model.vision_tower.") and not changed("model.language_model.")
    untrained = KimiK25(to_run_config(compose(["model=tiny-vl"])).model).state_dict()
    assert not torch.equal(before["model.vision_tower.pos_emb"], untrained["vision_tower.pos_emb"])


def test_qk_clip_experiment_runs_three_arms_and_writes_its_report(
    tiny_overrides: list[str], tmp_path: Path
) -> None:
    res = run_cli(
        "train",
        "--multirun",
        *tiny_overrides,
        "experiment=qk_clip",
        "model=tiny",
        "trainer.max_steps=12",
        "trainer.log_every_n_steps=2",
        "trainer.val_check_interval=12",
        "trainer.checkpoint_every_n_steps=12",
        "phase.schedule.warmup_steps=2",
        "phase.optim.qk_clip_tau=0.05",
        "data.seq_len=32",
        cwd=tmp_path,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    (sweep,) = list((tmp_path / "runs" / "qk_clip" / "multirun").iterdir())
    report = json.loads((sweep / "report.json").read_text())
    assert [a["arm"] for a in report["arms"]] == ["adamw", "muon", "muonclip"]
    assert (sweep / "qk_clip.png").stat().st_size > 10_000
    text = (sweep / "report.md").read_text()
    assert "| muonclip | 0.05 | 12 |" in text and "## What this run shows" in text
    clip_job = next(sweep / a["job"] for a in report["arms"] if a["arm"] == "muonclip")
    logits = pd.read_parquet(clip_job / "attn_logits.parquet")
    assert list(logits.columns) == ["step", "layer", "head", "max_logit", "clipped", "tower"]
    assert logits.clipped.any() and report["arms"][2]["clipped_head_steps"] > 0
    adamw_job = next(sweep / a["job"] for a in report["arms"] if a["arm"] == "adamw")
    assert not pd.read_parquet(adamw_job / "attn_logits.parquet").clipped.any()  # measured, never clipped


def test_latest_checkpoint_prefers_a_newer_step_file_over_last(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path) is None
    (tmp_path / "step-0000010.ckpt").write_bytes(b"a")
    (tmp_path / LAST_CHECKPOINT).write_bytes(b"b")
    os.utime(tmp_path / "step-0000010.ckpt", ns=(1_000, 1_000))
    os.utime(tmp_path / LAST_CHECKPOINT, ns=(2_000, 2_000))
    assert latest_checkpoint(tmp_path).name == LAST_CHECKPOINT
    (tmp_path / "step-0000020.ckpt").write_bytes(b"c")  # killed before last.ckpt was rewritten
    os.utime(tmp_path / "step-0000020.ckpt", ns=(3_000, 3_000))
    assert latest_checkpoint(tmp_path).name == "step-0000020.ckpt"


def test_resumed_run_equals_an_uninterrupted_one(tiny_overrides: list[str], tmp_path: Path) -> None:
    """CPU fp32, deterministic: kill after a checkpoint, resume, and the curve is the uninterrupted one."""
    overrides = [
        *tiny_overrides,
        "trainer.max_steps=24",
        "trainer.log_every_n_steps=1",
        "trainer.val_check_interval=100",
        "trainer.checkpoint_every_n_steps=8",
        "trainer.deterministic=true",
        "phase.schedule.warmup_steps=2",
    ]
    whole = tmp_path / "whole"
    res = run_cli("train", *overrides, f"hydra.run.dir={whole}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "kimi_lab.cli", "train", *overrides, f"hydra.run.dir={killed}"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.time() + 240
    while not (killed / CHECKPOINT_DIR / "step-0000008.ckpt").exists():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.time() < deadline, "no checkpoint at step 8"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    newest = latest_checkpoint(killed / CHECKPOINT_DIR)
    assert newest is not None
    ckpt_step = torch.load(newest, map_location="cpu", weights_only=False)["global_step"]
    assert 8 <= ckpt_step < 24
    res = run_cli("train", *overrides, f"hydra.run.dir={killed}", "ckpt_path=auto", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]

    def curve(run: Path, key: str = TRAIN_LOSS) -> pd.Series:
        return _per_step(pd.read_parquet(run / METRICS_FILE), key)

    a, b = curve(whole), curve(killed)
    after = [s for s in a.index if s >= ckpt_step]
    assert after and list(b.loc[after].index) == after
    # the same numbers from the checkpoint on: weights, optimizer, schedule, router biases, data
    assert b.loc[after].to_numpy() == pytest.approx(a.loc[after].to_numpy(), rel=1e-5, abs=1e-6)
    # and the running totals continue from the checkpoint's
    tokens_a, tokens_b = curve(whole, TRAIN_TOKENS), curve(killed, TRAIN_TOKENS)
    assert tokens_b.loc[after].to_numpy() == pytest.approx(tokens_a.loc[after].to_numpy())
