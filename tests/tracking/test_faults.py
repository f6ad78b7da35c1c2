"""Numerical and disk faults: NaN/Inf steps are skipped and then stop the run; output folders are checked first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from kimi_lab.config import compose, to_run_config, validate_run
from kimi_lab.errors import NonFiniteError, OutputDirError
from kimi_lab.metrics import (
    CHECKPOINT_COUNTERS,
    CHECKPOINT_DIR,
    LAST_CHECKPOINT,
    STATUS_FILE,
    TRAIN_SKIPPED_STEPS,
    TRAIN_TOKENS,
)
from kimi_lab.phases.pretrain import PretrainModule
from kimi_lab.tracking import preflight
from kimi_lab.train import train
from tests.conftest import REPO, run_cli


def _fit(overrides: list[str], run_dir: Path) -> dict[str, float]:
    dcfg = compose(overrides)
    cfg = to_run_config(dcfg)
    validate_run(cfg)
    return train(cfg, run_dir, OmegaConf.to_container(dcfg, resolve=True))


def test_nonfinite_steps_are_skipped_then_stop_the_run(
    tiny_overrides: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = PretrainModule.training_step
    poison = {3, 6, 7, 8}  # step 3 alone is skipped; 6, 7, 8 in a row stop the run (limit 3)
    seen: dict[int, torch.Tensor] = {}

    def poisoned(self: PretrainModule, batch: object, batch_idx: int) -> torch.Tensor:
        w = next(self.model.parameters())
        seen[self.global_step] = w.detach().clone()  # the weights this step starts from
        loss = real(self, batch, batch_idx)
        return loss * float("nan") if self.global_step in poison else loss

    monkeypatch.setattr(PretrainModule, "training_step", poisoned)
    run = tmp_path / "run"
    overrides = [
        *tiny_overrides,
        "trainer.max_steps=20",
        "trainer.max_nonfinite_steps=3",
        "trainer.checkpoint_every_n_steps=5",
        "trainer.val_check_interval=100",
        "phase.schedule.warmup_steps=0",
    ]
    with pytest.raises(NonFiniteError, match="3 non-finite steps in a row"):
        _fit(overrides, run)
    assert torch.equal(seen[3], seen[4])  # the skipped step left the weights as they were
    assert not torch.equal(seen[2], seen[3])  # ...while a normal step changes them
    assert max(seen) == 8  # stopped at the third bad step in a row, not before, not after
    ckpt = torch.load(run / CHECKPOINT_DIR / LAST_CHECKPOINT, map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 5
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert json.loads((run / STATUS_FILE).read_text())["status"] in ("failed", "interrupted")


def test_nonfinite_limit_zero_never_stops(
    tiny_overrides: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = PretrainModule.training_step

    def poisoned(self: PretrainModule, batch: object, batch_idx: int) -> torch.Tensor:
        loss = real(self, batch, batch_idx)
        return loss * float("inf") if self.global_step >= 2 else loss

    monkeypatch.setattr(PretrainModule, "training_step", poisoned)
    metrics = _fit(
        [
            *tiny_overrides,
            "trainer.max_steps=6",
            "trainer.max_nonfinite_steps=0",
            "phase.schedule.warmup_steps=0",
        ],
        tmp_path / "run",
    )
    assert metrics[TRAIN_SKIPPED_STEPS] == 4


def test_running_totals_survive_a_resume(
    tiny_overrides: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The non-finite-step total and the token total live in the checkpoint: a resumed run continues
    them instead of starting again from 0."""
    real = PretrainModule.training_step

    def poisoned(self: PretrainModule, batch: object, batch_idx: int) -> torch.Tensor:
        loss = real(self, batch, batch_idx)
        return loss * float("nan") if self.global_step == 2 else loss

    monkeypatch.setattr(PretrainModule, "training_step", poisoned)
    run = tmp_path / "run"
    common = [*tiny_overrides, "trainer.val_check_interval=100", "phase.schedule.warmup_steps=0"]
    first = _fit([*common, "trainer.max_steps=4", "trainer.checkpoint_every_n_steps=4"], run)
    assert first[TRAIN_SKIPPED_STEPS] == 1
    ckpt = torch.load(run / CHECKPOINT_DIR / LAST_CHECKPOINT, map_location="cpu", weights_only=False)
    assert ckpt[CHECKPOINT_COUNTERS]["nonfinite_steps"] == 1
    assert ckpt[CHECKPOINT_COUNTERS]["tokens"] == first[TRAIN_TOKENS] > 0

    monkeypatch.setattr(PretrainModule, "training_step", real)
    resumed = _fit(
        [*common, "trainer.max_steps=8", f"ckpt_path={run / CHECKPOINT_DIR / LAST_CHECKPOINT}"], run
    )
    assert resumed[TRAIN_SKIPPED_STEPS] == 1  # the step skipped before the resume still counts
    assert resumed[TRAIN_TOKENS] == pytest.approx(2 * first[TRAIN_TOKENS])  # 4 more steps, no padding


def test_output_folder_in_the_way_is_one_line(tiny_overrides: list[str], tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    res = run_cli("train", *tiny_overrides, f"runs_dir={blocker / 'runs'}", cwd=tmp_path)
    assert res.returncode == 2
    assert (
        res.stderr.strip().splitlines()[-1].startswith("error: ") and "is a file, not a folder" in res.stderr
    )


def test_read_only_filesystem_is_refused_before_training(tiny_overrides: list[str], tmp_path: Path) -> None:
    ro = Path("/proc/kimi-lab-runs")  # procfs takes no new files, root or not
    res = run_cli("train", *tiny_overrides, f"hydra.run.dir={ro}", cwd=tmp_path)
    assert res.returncode == 2
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "not writable" in last


def test_too_little_free_space_is_refused(
    tiny_overrides: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Usage:
        free = 1_000  # bytes

    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda p: Usage())
    with pytest.raises(OutputDirError, match="GB free, but this run's checkpoints need"):
        _fit([*tiny_overrides, "trainer.max_steps=2", "phase.schedule.warmup_steps=0"], tmp_path / "run")
    assert not (tmp_path / "run" / CHECKPOINT_DIR).exists()  # nothing trained


def test_preflight_is_repo_independent() -> None:
    assert preflight.nearest_existing(REPO / "no" / "such" / "dir") == REPO
