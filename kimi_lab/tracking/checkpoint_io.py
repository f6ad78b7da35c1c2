"""Checkpoints written atomically: a temp file in the same folder, fsync, then rename.

A run killed mid-save leaves the previous checkpoint intact and never a partial
``last.ckpt`` that a resume could read.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    """The newest complete checkpoint in ``ckpt_dir``: ``last.ckpt`` or a newer ``step-*.ckpt``.

    Lightning writes the step file first and ``last.ckpt`` after it; a run killed
    between the two must resume from the step file, not from the older ``last``.
    """
    files = [p for p in Path(ckpt_dir).glob("*.ckpt") if p.is_file()]
    if not files:
        return None
    # newest by mtime; ties go to last.ckpt (it is written last)
    return max(files, key=lambda p: (p.stat().st_mtime_ns, p.name == "last.ckpt"))
