"""Short runs just work: the schedule shrinks, the first and last steps are logged, every promised
file is there, the dashboard draws the curves, and progress without a terminal is plain lines."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from kimi_lab import metrics as M
from kimi_lab.config import compose, to_run_config, validate_run
from kimi_lab.optim.schedule import fit_schedule, schedule_steps, schedule_warning, wsd_multiplier
from kimi_lab.tracking.progress import LineProgress, StepProgressBar, format_duration, progress_callback
from kimi_lab.tracking.run_dir import is_logged_step
from tests.conftest import REPO

EXPERIMENTS = sorted(
    str(p.relative_to(REPO / "conf" / "experiment").with_suffix(""))
    for p in (REPO / "conf" / "experiment").rglob("*.yaml")
)
PROGRESS_LINE = re.compile(
    r"\[kimi_lab\.progress\]\[INFO\] step (\d+)/(\d+)  loss \d+\.\d{4}  tok/s [\d,]+  "
)


def test_fit_schedule_shrinks_proportionally_only_when_needed() -> None:
    assert fit_schedule(30, 60, 300) == (30, 60)  # fits: unchanged
    assert fit_schedule(30, 1, 6) == (5, 0)  # 6/31 of each, rounded down
    assert fit_schedule(30, 10, 20) == (15, 5)
    assert fit_schedule(30, 0, 1) == (1, 0)
    for w, d, n in [(30, 1, 6), (7, 9, 3), (100, 100, 1), (5, 5, 10)]:
        fw, fd = fit_schedule(w, d, n)
        assert fw + fd <= n and fw <= w and fd <= d
    # the multipliers of a 1-step run stay in (0, 1]: the step trains
    assert 0 < wsd_multiplier(0, 1, *fit_schedule(30, 0, 1), 0.1) <= 1


@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize("max_steps", [1, 3])
def test_every_experiment_accepts_any_max_steps(experiment: str, max_steps: int) -> None:
    cfg = to_run_config(compose([f"experiment={experiment}", f"trainer.max_steps={max_steps}"]))
    validate_run(cfg)  # no longer refused
    warmup, decay = schedule_steps(cfg)
    assert warmup + decay <= max_steps
    note = schedule_warning(cfg)
    assert note is None or (f"trainer.max_steps={max_steps}" in note and "\n" not in note)


def test_logged_steps_include_the_first_and_the_last() -> None:
    assert [s for s in range(25) if is_logged_step(s, 10, 25)] == [0, 9, 19, 24]
    assert [s for s in range(3) if is_logged_step(s, 10, 3)] == [0, 2]
    assert [s for s in range(1) if is_logged_step(s, 10, 1)] == [0]


def test_progress_is_a_bar_on_a_terminal_and_lines_elsewhere(tmp_path: Path) -> None:
    class Tty:
        def isatty(self) -> bool:
            return True

    assert isinstance(progress_callback(10, Tty()), StepProgressBar)  # type: ignore[arg-type]
    with (tmp_path / "out.txt").open("w") as f:
        assert isinstance(progress_callback(10, f), LineProgress)
    assert [format_duration(s) for s in (0, 42, 187, 7500)] == ["0s", "42s", "3m07s", "2h05m"]


@pytest.fixture(scope="module")
def short_runs(tiny_tokenizer: Path, tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The quickstart (its 30-step warmup, a log line every 10 steps) for 1 and for 3 steps, stdout in a file."""
    work = tmp_path_factory.mktemp("short")
    stdout = work / "stdout.txt"
    overrides = [
        "experiment=quickstart",
        "model=tiny",
        f"data.sources.text.path={tiny_shards}",
        f"data.tokenizer={tiny_tokenizer}",
        "data.seq_len=32",
        "data.batch_size=4",
        "data.val_batches=2",
        "trainer.precision=32-true",
        "trainer.limit_val_batches=2",
        "logger=wandb",  # offline (conftest): the run leaves its wandb/ folder, as the README says
        f"hydra.sweep.dir={work / 'runs' / 'quickstart' / 'multirun' / 'short'}",
        "trainer.max_steps=1,3",
    ]
    with stdout.open("w") as out:  # not a terminal: what CI, SLURM and nohup see
        res = subprocess.run(
            [sys.executable, "-m", "kimi_lab.cli", "train", "--multirun", *overrides],
            cwd=work,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
            timeout=600,
        )
    assert res.returncode == 0, res.stderr[-3000:]
    sweep = work / "runs" / "quickstart" / "multirun" / "short"
    return {"root": work / "runs", "jobs": {1: sweep / "0", 3: sweep / "1"}, "stdout": stdout.read_text()}


def test_short_runs_log_first_and_last_steps_and_leave_every_file(short_runs: dict) -> None:
    for max_steps, job in short_runs["jobs"].items():
        for name in (M.CONFIG_FILE, M.METRICS_FILE, M.MOE_LOAD_FILE, M.ATTN_LOGITS_FILE, M.LOG_FILE):
            assert (job / name).is_file(), name
        assert (job / M.CHECKPOINT_DIR / M.LAST_CHECKPOINT).is_file()
        assert list((job / M.WANDB_DIR).glob("offline-run-*"))
        status = json.loads((job / M.STATUS_FILE).read_text())
        assert status["status"] == "finished" and status["step"] == max_steps
        expected = [0, max_steps - 1] if max_steps > 1 else [0]
        metrics = pd.read_parquet(job / M.METRICS_FILE)
        for key in (M.TRAIN_LOSS, M.TRAIN_LR, M.MOE_IMBALANCE, M.ATTN_MAX_LOGIT):
            assert sorted(metrics[metrics.key == key].step) == expected, key
        for name in (M.MOE_LOAD_FILE, M.ATTN_LOGITS_FILE):
            assert sorted(pd.read_parquet(job / name).step.unique()) == expected, name


def test_short_runs_warn_once_about_the_schedule(short_runs: dict) -> None:
    warnings = [line for line in short_runs["stdout"].splitlines() if "phase.schedule:" in line]
    assert len(warnings) == 2  # one per run
    assert "trainer.max_steps=1; shrunk proportionally to warmup 1 + decay 0 steps" in warnings[0]
    assert "trainer.max_steps=3; shrunk proportionally to warmup 2 + decay 0 steps" in warnings[1]


def test_progress_without_a_terminal_is_one_plain_line_per_report(short_runs: dict) -> None:
    out = short_runs["stdout"]
    assert "\r" not in out  # no bar redrawn in place
    reports = [(int(m[1]), int(m[2])) for m in PROGRESS_LINE.finditer(out)]
    # a report at every logged step (the first and the last here), each on its own line
    assert reports == [(1, 1), (1, 3), (3, 3)]
    lines = [line for line in out.splitlines() if "[kimi_lab.progress]" in line]
    assert len(lines) == 3 and all("eta" in line for line in lines)
    log = (short_runs["jobs"][3] / M.LOG_FILE).read_text()
    assert len(PROGRESS_LINE.findall(log)) == 2 and "\r" not in log  # train.log has them too


def test_dashboard_draws_the_curves_of_a_short_run(short_runs: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KIMI_LAB_RUNS_DIR", str(short_runs["root"]))
    at = AppTest.from_file(str(REPO / "dashboards" / "views" / "runs.py"), default_timeout=120)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.warning  # e.g. "this run has no metrics.parquet"
    assert len(at.dataframe[0].value) == 2
    charts = at.get("vega_lite_chart") + at.get("arrow_vega_lite_chart")
    assert charts  # the train-loss curve
    spec = json.dumps([c.proto.spec for c in charts])
    assert M.TRAIN_LOSS in spec


def test_line_progress_reports_each_logged_step_once_and_each_validation(caplog) -> None:
    import torch

    class FakeTrainer:
        def __init__(self) -> None:
            self.max_steps, self.global_step, self.sanity_checking = 25, 0, False
            self.callback_metrics: dict = {}

    t, bar = FakeTrainer(), LineProgress(every=10)
    bar.on_train_start(t, None)  # type: ignore[arg-type]
    with caplog.at_level("INFO", logger="kimi_lab.progress"):
        for step in range(25):
            bar.on_train_batch_start(t)  # type: ignore[arg-type]
            t.global_step = step + 1
            t.callback_metrics = {
                M.TRAIN_LOSS: torch.tensor(5.0 - step / 10),
                M.TRAIN_TOKENS_PER_SEC: torch.tensor(1e3),
            }
            for _micro_batch in range(2):  # gradient accumulation: hooks run per micro-batch
                bar.on_train_batch_end(t, None)  # type: ignore[arg-type]
            if step == 9:
                t.callback_metrics[M.VAL_LOSS] = torch.tensor(4.25)
                bar.on_validation_start(t, None)  # type: ignore[arg-type]
                bar.on_validation_end(t, None)  # type: ignore[arg-type]
        bar.on_train_end(t, None)  # type: ignore[arg-type]
    lines = [r.getMessage() for r in caplog.records]
    steps = [line.split()[1] for line in lines if line.startswith("step ")]
    assert steps == ["1/25", "10/25", "20/25", "25/25"]  # steps 0, 9, 19 and 24: once each
    assert "validation at step 10: val_loss 4.2500" in lines
    assert lines[0].startswith("step 1/25  loss 5.0000  tok/s 1,000  elapsed ") and "eta " in lines[0]
