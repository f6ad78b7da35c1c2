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

from kimi_lab.metrics import LAST_CHECKPOINT


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


def is_sharded_checkpoint(path: Path) -> bool:
    """A distributed (FSDP2) checkpoint: a folder of per-rank shards, ``.metadata`` and ``meta.pt``."""
    path = Path(path)
    return path.is_dir() and (path / ".metadata").is_file() and (path / "meta.pt").is_file()


def consolidate(path: Path) -> dict[str, Any]:
    """A sharded checkpoint as one in-memory checkpoint dict (full weights, Lightning's metadata).

    Enough to evaluate, export or start another phase from (``init_from``); the optimizer
    state stays in the sharded folder, so resuming is done from the folder itself.
    """
    import tempfile

    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        flat = Path(tmp) / "flat.pt"
        dcp_to_torch_save(str(path), str(flat))
        tensors = torch.load(flat, map_location="cpu", weights_only=False)
    meta = torch.load(path / "meta.pt", map_location="cpu", weights_only=False)
    return {**meta, "state_dict": tensors["state_dict"]}


def complete_checkpoint(path: Path) -> bool:
    """A checkpoint file, or a sharded folder whose metadata was written (the last thing saved)."""
    return Path(path).is_file() or is_sharded_checkpoint(path)


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    """The newest complete checkpoint in ``ckpt_dir``: ``last.ckpt`` or a newer ``step-*.ckpt``.

    Lightning writes the step file first and ``last.ckpt`` after it; a run killed
    between the two must resume from the step file, not from the older ``last``.
    Sharded (FSDP2) checkpoints are folders; they count once their metadata exists.
    """
    files = [p for p in Path(ckpt_dir).glob("*.ckpt") if complete_checkpoint(p)]
    if not files:
        return None
    # newest by mtime; ties go to last.ckpt (it is written last)
    return max(files, key=lambda p: (p.stat().st_mtime_ns, p.name == LAST_CHECKPOINT))
