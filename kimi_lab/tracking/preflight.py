"""Pre-flight checks of the output folder: fail before training, not at the first checkpoint.

A run that cannot write its run directory, or that would fill the disk with its
checkpoints, should say so in one line before it spends an hour training.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from kimi_lab.errors import OutputDirError

# Bytes per parameter in a checkpoint: fp32 weights + AdamW's two fp32 moments.
CHECKPOINT_BYTES_PER_PARAM = 12


def nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable(path: Path, what: str = "run directory") -> None:
    """``path`` (or the folder it would be created in) accepts new files."""
    base = nearest_existing(Path(path))
    if not base.is_dir():
        raise OutputDirError(f"{path}: cannot create the {what}: {base} is a file, not a folder")
    probe = base / f".kimi-lab-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"\0" * 4096)
    except OSError as exn:
        raise OutputDirError(
            f"{path}: the {what} is not writable ({exn.strerror or exn}): choose another runs_dir or hydra.run.dir"
        ) from None
    finally:
        probe.unlink(missing_ok=True)


def check_free_space(path: Path, n_params: int, checkpoints_kept: int) -> None:
    """Room for the checkpoints the run keeps, plus one being written beside them."""
    ckpt = n_params * CHECKPOINT_BYTES_PER_PARAM
    need = ckpt * (checkpoints_kept + 1)
    free = shutil.disk_usage(nearest_existing(Path(path))).free
    if free < need:
        raise OutputDirError(
            f"{path}: {free / 1e9:.2f} GB free, but this run's checkpoints need about {need / 1e9:.2f} GB "
            f"({checkpoints_kept} kept + 1 being written, {ckpt / 1e9:.2f} GB each): free space or move runs_dir"
        )
