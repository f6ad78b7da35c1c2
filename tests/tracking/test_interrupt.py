"""Stop signals checkpoint the current step; ``ckpt_path=auto`` continues the right run."""

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
    LAST_CHECKPOINT,
    METRICS_FILE,
    STATUS_FILE,
    STATUS_FINISHED,
    STATUS_INTERRUPTED,
    STATUS_RUNNING,
    TRAIN_LOSS,
    TRAIN_TOKENS,
)
from kimi_lab.phases.pretrain import PretrainModule
from kimi_lab.tracking.interrupt import StopOnSignal, StoppedBySignal, resume_command
from kimi_lab.tracking.resume import choose_run_to_resume
from kimi_lab.train import train
from kimi_lab.train_args import preflight_output
from tests.conftest import run_cli

STEPS = 12


def _fit(overrides: list[str], run_dir: Path) -> dict[str, float]:
    dcfg = compose(overrides)
    cfg = to_run_config(dcfg)
    validate_run(cfg)
    return train(cfg, run_dir, OmegaConf.to_container(dcfg, resolve=True), overrides)


def _curve(run: Path, key: str = TRAIN_LOSS) -> pd.Series:
    m = pd.read_parquet(run / METRICS_FILE)
    return m[m.key == key].set_index("step").value.sort_index()


def _status(run: Path) -> dict:
    return json.loads((run / STATUS_FILE).read_text())


def test_sigint_mid_run_resumes_the_interrupted_run_not_the_finished_one(
    tiny_overrides: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The issue's scenario: a finished run, then a newer one interrupted before its first periodic
    checkpoint. The interrupt saves its step; ``ckpt_path=auto`` continues it (never the finished
    run, whose files stay as they were) and the finished curve equals an uninterrupted run's."""
    overrides = [
        *tiny_overrides,
        "experiment=quickstart",
        f"trainer.max_steps={STEPS}",
        "trainer.log_every_n_steps=1",
        "trainer.val_check_interval=100",
        "trainer.checkpoint_every_n_steps=100",  # no periodic checkpoint before the interrupt
        "trainer.deterministic=true",
        "phase.schedule.warmup_steps=2",
    ]
    root = tmp_path / "runs" / "quickstart"
    finished, interrupted = root / "2026-01-01_00-00-00", root / "2026-01-01_00-00-01"
    _fit(overrides, finished)  # uninterrupted: the reference curve
    kept = {name: (finished / name).read_bytes() for name in (STATUS_FILE, METRICS_FILE)}

    real = PretrainModule.training_step

    def ctrl_c_at_step_5(self: PretrainModule, batch: object, batch_idx: int) -> torch.Tensor:
        if self.global_step == 5:
            os.kill(os.getpid(), signal.SIGINT)  # arrives mid-step, as a Ctrl-C does
        return real(self, batch, batch_idx)

    monkeypatch.setattr(PretrainModule, "training_step", ctrl_c_at_step_5)
    capsys.readouterr()
    with pytest.raises(StoppedBySignal) as stopped:
        _fit(overrides, interrupted)
    assert stopped.value.exit_code == 130
    out = capsys.readouterr().out
    # the step being computed (index 5) finished and is in the checkpoint: 6 steps done
    ckpt = torch.load(interrupted / CHECKPOINT_DIR / LAST_CHECKPOINT, map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 6
    assert (interrupted / CHECKPOINT_DIR / LAST_CHECKPOINT).resolve().name == "step-0000006.ckpt"
    assert f"interrupted (SIGINT) at step 6 of {STEPS}: checkpoint" in out
    assert f"resume with: {resume_command(overrides, interrupted)}\n" in out
    assert _status(interrupted)["status"] == STATUS_INTERRUPTED and _status(interrupted)["step"] == 6
    assert list(_curve(interrupted).index) == list(range(6))  # every finished step logged, none after
    monkeypatch.setattr(PretrainModule, "training_step", real)

    res = run_cli("train", *overrides, "ckpt_path=auto", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"ckpt_path=auto: resuming {interrupted} (interrupted at step 6 of {STEPS})" in res.stdout
    assert sorted(root.iterdir()) == [finished, interrupted]  # no third run folder
    assert kept == {name: (finished / name).read_bytes() for name in kept}  # the finished run untouched
    assert _status(interrupted)["status"] == STATUS_FINISHED and _status(interrupted)["step"] == STEPS

    whole, resumed = _curve(finished), _curve(interrupted)
    assert list(resumed.index) == list(range(STEPS))  # every step exactly once: none lost, none repeated
    assert resumed.to_numpy() == pytest.approx(whole.to_numpy(), rel=1e-5, abs=1e-6)
    assert _curve(interrupted, TRAIN_TOKENS).to_numpy() == pytest.approx(
        _curve(finished, TRAIN_TOKENS).to_numpy()
    )


def test_ctrl_c_on_the_command_line_checkpoints_and_exits_130(
    tiny_overrides: list[str], tmp_path: Path
) -> None:
    """Ctrl-C from a terminal (SIGINT to the process group) mid-run: a checkpoint of the step, the
    run directory and the resume command, exit status 130."""
    args = [
        *[o for o in tiny_overrides if o != "trainer.progress_bar=false"],
        "trainer.max_steps=100000",  # it can only end by the signal
        "trainer.log_every_n_steps=1",
        "trainer.val_check_interval=100000",
    ]
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "kimi_lab.cli", "train", *args, f"hydra.run.dir={run}"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    deadline = time.time() + 240
    assert proc.stdout is not None
    for line in proc.stdout:  # progress lines, one per step (stdout is not a terminal)
        lines.append(line)
        if " step 3/100000 " in line:
            os.killpg(proc.pid, signal.SIGINT)
            break
        assert time.time() < deadline, "no progress line for step 3"
    rest, _ = proc.communicate(timeout=120)
    out = "".join(lines) + rest
    assert proc.returncode == 130, out[-3000:]
    step = _status(run)["step"]
    assert _status(run)["status"] == STATUS_INTERRUPTED and step >= 3
    assert f"interrupted (SIGINT) at step {step} of 100000: checkpoint {run / CHECKPOINT_DIR}" in out
    assert f"hydra.run.dir={run} ckpt_path=auto" in out and f"run directory: {run}" in out
    newest = torch.load(run / CHECKPOINT_DIR / LAST_CHECKPOINT, map_location="cpu", weights_only=False)
    assert newest["global_step"] == step
    assert _curve(run).index.max() == step - 1  # the logged steps are the checkpoint's


def _run_folder(root: Path, name: str, status: str | None, ckpt: bool, mtime: int, **extra: object) -> Path:
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    (run / CONFIG_FILE).write_text("experiment: quickstart\n")
    marker = run / CONFIG_FILE
    if status is not None:
        marker = run / STATUS_FILE
        marker.write_text(json.dumps({"status": status, "step": 7, "max_steps": 300, **extra}))
    if ckpt:
        (run / CHECKPOINT_DIR).mkdir()
        (run / CHECKPOINT_DIR / "step-0000100.ckpt").write_bytes(b"x")
    os.utime(marker, (mtime, mtime))
    return run


def test_auto_resume_picks_the_newest_unfinished_run_with_a_checkpoint(tmp_path: Path) -> None:
    root = tmp_path / "quickstart"
    assert choose_run_to_resume(root).run is None  # no runs at all: a new one
    _run_folder(root, "a-finished-newest", STATUS_FINISHED, True, 500)
    assert choose_run_to_resume(root).run is None  # a finished run is never continued
    _run_folder(root, "b-failed", "failed", True, 100)
    killed = _run_folder(root, "c-killed", STATUS_RUNNING, True, 200, pid=2**22 + 1, host="elsewhere")
    choice = choose_run_to_resume(root)
    assert choice.run == killed and choice.notes == [f"resuming {killed} (killed at step 7 of 300)"]
    no_ckpt = _run_folder(root, "d-interrupted-no-ckpt", STATUS_INTERRUPTED, False, 300)
    choice = choose_run_to_resume(root)
    assert choice.run == killed
    assert (
        choice.notes[0]
        == f"the newest unfinished run, {no_ckpt} (interrupted at step 7 of 300), has no checkpoint"
    )
    import socket

    live = _run_folder(root, "e-live", STATUS_RUNNING, True, 400, pid=os.getppid(), host=socket.gethostname())
    choice = choose_run_to_resume(root)
    assert (
        choice.run == killed
        and choice.notes[0] == f"{live} is still running (pid {os.getppid()}): left alone"
    )


def test_a_new_run_never_overwrites_a_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = _run_folder(tmp_path, "done", STATUS_FINISHED, True, 100)
    with pytest.raises(SystemExit) as exit_:
        preflight_output([f"hydra.run.dir={run}", "trainer.max_steps=10"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"error: hydra.run.dir={run} already holds a run, {run} (finished at step 7 of 300): "
        "add ckpt_path=auto to continue it, or choose a new folder"
    )
    preflight_output([f"hydra.run.dir={run}", "ckpt_path=auto"])  # continuing it, named: allowed


def test_stop_signals_raise_a_flag_and_a_second_ctrl_c_quits(tmp_path: Path) -> None:
    stopper = StopOnSignal(checkpoint=None)  # type: ignore[arg-type]
    outer_calls: list[int] = []
    previous = signal.signal(signal.SIGUSR2, lambda s, f: outer_calls.append(s))  # a scheduler's handler
    try:
        stopper.install()
        os.kill(os.getpid(), signal.SIGUSR2)  # submitit's pre-emption signal
        assert stopper.signum == signal.SIGUSR2 and not outer_calls  # nothing else happens yet
        os.kill(os.getpid(), signal.SIGTERM)  # later signals change nothing
        assert stopper.signum == signal.SIGUSR2
        stopped = stopper.stopped()
        assert stopped is not None and stopped.exit_code == 128 + signal.SIGUSR2
        stopped.hand_over()  # after the checkpoint: the scheduler's handler requeues
        assert outer_calls == [signal.SIGUSR2]
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C
    finally:
        stopper.restore()
        signal.signal(signal.SIGUSR2, previous)
    assert signal.getsignal(signal.SIGTERM) is not stopper._on_signal


class _Ranks:
    """A strategy of several ranks where the others hold ``others`` (0: no signal): ``reduce``
    all-reduces this rank's value with theirs by maximum, as torch.distributed would."""

    def __init__(self, others: list[int]) -> None:
        self.others, self.root_device = others, torch.device("cpu")

    def reduce(self, tensor: torch.Tensor, reduce_op: object = None) -> torch.Tensor:
        from torch.distributed import ReduceOp

        assert reduce_op == ReduceOp.MAX
        return torch.tensor([int(tensor), *self.others]).max()

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        return decision or any(self.others)


def test_every_rank_reports_the_signal_another_rank_received() -> None:
    from types import SimpleNamespace

    quiet = StopOnSignal(checkpoint=None)  # type: ignore[arg-type]
    trainer = SimpleNamespace(world_size=2, strategy=_Ranks([int(signal.SIGUSR1)]))
    assert quiet._requested(trainer)  # type: ignore[arg-type]
    stopped = quiet.stopped()
    assert stopped is not None and stopped.exit_code == 128 + signal.SIGUSR1  # not SIGTERM's 143
    signalled = StopOnSignal(checkpoint=None)  # type: ignore[arg-type]
    signalled.signum = signal.SIGINT
    assert signalled._requested(SimpleNamespace(world_size=2, strategy=_Ranks([0])))  # type: ignore[arg-type]
    assert signalled.signum == signal.SIGINT
    nobody = StopOnSignal(checkpoint=None)  # type: ignore[arg-type]
    assert not nobody._requested(SimpleNamespace(world_size=2, strategy=_Ranks([0])))  # type: ignore[arg-type]
    assert nobody.stopped() is None
