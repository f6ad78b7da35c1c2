"""A run directory's ``status.json``: the one writer, atomic (a reader never sees half a file).

Training runs (``RunDirCallback``) and ``kimi-lab swarm run`` both write it, so the
dashboard lists any of them the same way.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from kimi_lab.metrics import RUN_STATUSES, STATUS_FILE


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def write_status(
    run_dir: Path,
    status: str,
    experiment: str,
    step: int,
    max_steps: int,
    started: float,
    final: dict[str, float],
) -> None:
    """``run_dir/status.json``: ``status`` (one of ``RUN_STATUSES``), where the run is, its final metrics."""
    if status not in RUN_STATUSES:
        raise ValueError(f"status {status!r}: one of {', '.join(RUN_STATUSES)}")
    write_json_atomic(
        Path(run_dir) / STATUS_FILE,
        {
            "status": status,
            "experiment": experiment,
            "step": step,
            "max_steps": max_steps,
            "started": started,
            "updated": time.time(),
            # who writes it: ckpt_path=auto leaves a run alone while its process lives
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "final": final,
        },
    )
