"""Stages that every multi-run experiment chains: a training run that resumes or is kept.

``kimi-lab experiment NAME`` reruns are cheap: a stage whose run folder already
finished is kept, an interrupted one resumes from its newest checkpoint.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from kimi_lab.errors import KimiLabError
from kimi_lab.metrics import CHECKPOINT_DIR, LAST_CHECKPOINT, STATUS_FILE

# Every stage of a ``--scale tiny`` chain on ``tiny-vl``: seconds per stage, conversations whole
# in one window, no validation to speak of; checks the chain, measures nothing.
TINY_VL_OVERRIDES = (
    "data.seq_len=2048",
    "data.batch_size=2",
    "data.vision.max_patches=64",
    "trainer.val_check_interval=1000",
    "trainer.limit_val_batches=1",
    "trainer.precision=32-true",
    "phase.schedule.warmup_steps=1",
    "model.max_seq_len=2048",
)


def _finished(run_dir: Path) -> bool:
    try:
        return json.loads((run_dir / STATUS_FILE).read_text()).get("status") == "finished"
    except (OSError, json.JSONDecodeError):
        return False


def train_stage(run_dir: Path, overrides: list[str], tag: str | None = None) -> Path:
    """One ``kimi-lab train`` run into ``run_dir`` (skipped when it already finished).

    ``tag`` prefixes the progress lines; by default the experiment the overrides name."""
    if tag is None:
        named = [o.split("=", 1)[1] for o in overrides if o.startswith("experiment=")]
        tag = named[0].split("/")[0] if named else "experiment"
    last = run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT
    if _finished(run_dir) and last.is_file():
        print(f"[{tag}] {run_dir.name}: finished earlier, kept", flush=True)
        return last
    cmd = [
        sys.executable,
        "-m",
        "kimi_lab.cli",
        "train",
        *overrides,
        f"hydra.run.dir={run_dir}",
        "ckpt_path=auto",
    ]
    print(f"[{tag}] {run_dir.name}: kimi-lab train {' '.join(overrides)}", flush=True)
    t0 = time.time()
    res = subprocess.run(cmd, check=False)
    if res.returncode != 0 or not last.is_file():
        raise KimiLabError(f"{tag} stage {run_dir.name} failed (exit {res.returncode}); see {run_dir}")
    print(f"[{tag}] {run_dir.name}: done in {time.time() - t0:.0f}s", flush=True)
    return last
