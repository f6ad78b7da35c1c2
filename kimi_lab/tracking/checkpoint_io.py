"""Checkpoints written atomically (a temp file in the same folder, fsync, then rename), and
the callback that decides when: every checkpoint a step file, ``last.ckpt`` a link to the newest.

A run killed mid-save leaves the previous checkpoint intact and never a partial
``last.ckpt`` that a resume could read.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.callbacks import ModelCheckpoint
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


class StepCheckpoint(ModelCheckpoint):
    """``step-NNNNNNN.ckpt`` every ``every_n_steps``, at the end of training and when asked
    (``save_now``: a stop signal); the two newest kept; ``last.ckpt`` a link to the newest.

    Every save is a step file, so ``last.ckpt`` is never written as a second full copy, and never
    written through its link into a step file (a sharded FSDP2 checkpoint is a folder, and
    saving to a link to a folder would fill that folder).
    """

    def __init__(self, dirpath: Path, every_n_steps: int) -> None:
        super().__init__(
            dirpath=str(dirpath),
            filename="step-{step:07d}",
            auto_insert_metric_name=False,
            every_n_train_steps=every_n_steps,
            save_last="link",
            save_top_k=2,
            monitor="step",
            mode="max",
            enable_version_counter=False,  # a resumed run's last.ckpt stays last.ckpt, not last-v1.ckpt
        )

    def save_now(self, trainer: L.Trainer) -> str:
        """Save this step (collective: every rank calls it) unless it is saved already; its path."""
        if self._last_global_step_saved != trainer.global_step:
            # ModelCheckpoint's own periodic path (private in Lightning 2.x, as its hooks call it):
            # the step file joins the top-k rotation and last.ckpt follows it, sharded or not.
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)
        return self.best_model_path or self.last_model_path

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.fast_dev_run and trainer.global_step > 0:
            self.save_now(trainer)  # the final step as a step file, not as a full last.ckpt
        super().on_train_end(trainer, pl_module)


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
