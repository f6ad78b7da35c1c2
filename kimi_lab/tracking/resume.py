"""Which run ``ckpt_path=auto`` continues, and what a run folder's status says about it.

``ckpt_path=auto`` without ``hydra.run.dir`` continues the newest *unfinished* run of the
experiment (interrupted, failed, or killed outright) that has a checkpoint. A finished run
is never picked: continuing one is asked for by naming it (``hydra.run.dir=<it>
ckpt_path=auto`` continues it in place and says so; ``ckpt_path=<its checkpoint>`` starts a
new run directory from its weights and state). A run whose process is still alive on this
machine is left alone.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kimi_lab.metrics import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    STATUS_FILE,
    STATUS_FINISHED,
    STATUS_RUNNING,
)
from kimi_lab.tracking.checkpoint_io import latest_checkpoint


def read_status(run_dir: Path) -> dict[str, Any]:
    """``status.json`` of a run folder; {} when it is missing or unreadable."""
    try:
        status = json.loads((Path(run_dir) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return status if isinstance(status, dict) else {}


def is_finished(run_dir: Path) -> bool:
    return read_status(run_dir).get("status") == STATUS_FINISHED


def is_alive(status: dict[str, Any]) -> bool:
    """A "running" status whose process still runs on this machine (not one killed outright)."""
    pid = status.get("pid")
    if status.get("status") != STATUS_RUNNING or not isinstance(pid, int) or pid == os.getpid():
        return False
    if status.get("host") != socket.gethostname():
        return False  # another machine's process: cannot tell, so it counts as killed
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def describe(run_dir: Path, status: dict[str, Any] | None = None) -> str:
    """``runs/x/T (interrupted at step 7 of 300)``: a run as the resume lines name it."""
    s = read_status(run_dir) if status is None else status
    state = s.get("status", "no status.json")
    if state == STATUS_RUNNING:
        state = "killed"  # reached only for runs whose process is gone
    step, max_steps = s.get("step"), s.get("max_steps")
    where = f" at step {step}" + (f" of {max_steps}" if max_steps else "") if step is not None else ""
    return f"{run_dir} ({state}{where})"


@dataclass
class ResumeChoice:
    run: Path | None  # the run folder to continue; None: start a new run
    notes: list[str] = field(default_factory=list)  # one line each, for the user


def choose_run_to_resume(experiment_dir: Path) -> ResumeChoice:
    """The newest unfinished run under ``experiment_dir`` (``runs/<experiment>``) with a checkpoint."""
    runs = [
        d
        for d in Path(experiment_dir).glob("*/")
        if d.is_dir() and ((d / STATUS_FILE).is_file() or (d / CONFIG_FILE).is_file())
    ]

    def last_activity(d: Path) -> float:
        marker = d / STATUS_FILE if (d / STATUS_FILE).is_file() else d / CONFIG_FILE
        return marker.stat().st_mtime

    notes: list[str] = []
    newest_unfinished = True
    for run in sorted(runs, key=last_activity, reverse=True):
        status = read_status(run)
        if status.get("status") == STATUS_FINISHED:
            continue
        if is_alive(status):
            notes.append(f"{run} is still running (pid {status['pid']}): left alone")
            continue
        if latest_checkpoint(run / CHECKPOINT_DIR) is None:
            if newest_unfinished:
                notes.append(f"the newest unfinished run, {describe(run, status)}, has no checkpoint")
            newest_unfinished = False
            continue
        return ResumeChoice(run, [*notes, f"resuming {describe(run, status)}"])
    return ResumeChoice(
        None, [*notes, f"no unfinished run with a checkpoint in {experiment_dir}: starting a new run"]
    )
