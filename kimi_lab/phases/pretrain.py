"""Phase ``pretrain``: next-token prediction over packed text (joint text-vision later)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from kimi_lab.config.schema import RunConfig
from kimi_lab.data.datamodule import KimiDataModule
from kimi_lab.errors import ConfigError
from kimi_lab.metrics import (
    LOSS_SUBSETS,
    TRAIN_AUX,
    TRAIN_CE,
    TRAIN_LOSS,
    TRAIN_SEQ_BALANCE,
    TRAIN_SKIPPED_BATCHES,
    TRAIN_Z_LOSS,
    VAL_LOSS,
    VAL_PPL,
    VAL_SOURCE_LOSS,
    VAL_SOURCE_SUBSET_LOSS,
)
from kimi_lab.model.multimodal import VisionInputError
from kimi_lab.phases.base import PhaseModule


class PretrainModule(PhaseModule):
    def __init__(self, cfg: RunConfig) -> None:
        super().__init__(cfg)
        self._val_sums: dict[str, list[float]] = {}  # per val source: [sum of token losses, tokens]
        # per (val source, named subset of its tokens): [sum of token losses, tokens]
        self._val_subset_sums: dict[tuple[str, str], list[float]] = {}

    def on_fit_start(self) -> None:
        dm = self.trainer.datamodule
        if isinstance(dm, KimiDataModule) and dm.has_vision and not self.model.has_vision:
            vision = [n for n, m in dm.modalities.items() if m != "text"]
            raise ConfigError(
                f"data.sources {', '.join(vision)} hold images or video, but model {self.cfg.model.name} "
                "has no vision tower: train it on text sources only, or use a -vl model"
            )

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.language_model.lm_head(hidden)

    def _lm_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Any]:
        tokens = batch["tokens"]
        inputs, labels = tokens[:, :-1], tokens[:, 1:]
        mask = batch.get("loss_mask")
        try:
            out = self.model(
                inputs,
                pixel_values=batch.get("pixel_values"),
                image_grid_thw=batch.get("image_grid_thw"),
                pixel_values_videos=batch.get("pixel_values_videos"),
                video_grid_thw=batch.get("video_grid_thw"),
                token_mask=batch.get("input_mask"),  # padding is left out of the routers' counts
                # packed conversations (SFT) are fenced: each attends to itself, from position 0
                segment_ids=batch.get("segment_ids"),
                positions=batch.get("positions"),
                compute_logits=mask is None,
            )
        except VisionInputError as exn:
            dm = self.trainer.datamodule
            keys = dm.latest.keys if isinstance(dm, KimiDataModule) and dm.latest is not None else []
            raise VisionInputError(f"{exn} (batch with samples {', '.join(keys[:4]) or 'unknown'})") from None
        # Loss on text targets only: never on placeholders, media markers or padding. Logits are
        # computed at the targets alone (SFT: the assistant's tokens, often under half the window).
        if mask is None:
            logits = out.logits.float()
        else:
            logits, labels = self._head(out.hidden[mask]).float(), labels[mask]
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        return ce, out

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        ce, out = self._lm_loss(batch)
        loss = ce + out.aux_loss
        if not loss.requires_grad:
            # Only frozen modules saw this batch (e.g. stage 1 trains the ViT, and the batch
            # holds no image): nothing to learn from it, so the step is skipped.
            self.log(TRAIN_SKIPPED_BATCHES, 1.0, on_step=True, on_epoch=False, reduce_fx="sum")
            return None
        real = batch.get("input_mask")
        self.count_step_tokens(int(real.sum()) if real is not None else batch["tokens"][:, 1:].numel())
        # Averaged over data-parallel ranks: the logged loss is the global batch's.
        self.log(TRAIN_LOSS, loss, prog_bar=True, on_step=True, on_epoch=False, sync_dist=True)
        self.log(TRAIN_CE, ce, on_step=True, on_epoch=False, sync_dist=True)
        self.log(TRAIN_AUX, out.aux_loss, on_step=True, on_epoch=False)
        if out.router_metrics:
            self.log(TRAIN_SEQ_BALANCE, out.router_metrics["seq_balance_loss"], on_step=True, on_epoch=False)
            self.log(TRAIN_Z_LOSS, out.router_metrics["router_z_loss"], on_step=True, on_epoch=False)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_sums = {}
        self._val_subset_sums = {}

    def validation_step(
        self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        ce, out = self._lm_loss(batch)
        dm = self.trainer.datamodule
        names = dm.val_names if isinstance(dm, KimiDataModule) else []
        name = names[dataloader_idx] if dataloader_idx < len(names) else str(dataloader_idx)
        n = float(batch["loss_mask"].sum()) if "loss_mask" in batch else float(batch["tokens"][:, 1:].numel())
        sums = self._val_sums.setdefault(name, [0.0, 0.0])
        sums[0] += float(ce) * n
        sums[1] += n
        subsets = batch.get("loss_subsets")
        if subsets is None or not bool(subsets.any()):
            return
        labels = batch["tokens"][:, 1:]
        for bit, subset in enumerate(LOSS_SUBSETS):
            mask = ((subsets >> bit) & 1).bool() & batch["loss_mask"]
            if bool(mask.any()):
                # logits at the subset's tokens (training computes them at the targets alone)
                logits = out.logits[mask] if out.logits is not None else self._head(out.hidden[mask])
                loss = F.cross_entropy(logits.float(), labels[mask], reduction="sum")
                sub = self._val_subset_sums.setdefault((name, subset), [0.0, 0.0])
                sub[0] += float(loss)
                sub[1] += float(mask.sum())

    def on_validation_epoch_end(self) -> None:
        # Token-weighted means: one curve per source, and val/loss over all of them.
        sums = self._val_sums
        total, count = 0.0, 0.0
        for name, (loss_sum, n) in sums.items():
            if n:
                self.log(
                    VAL_SOURCE_LOSS.format(source=name),
                    loss_sum / n,
                    on_step=False,
                    on_epoch=True,
                    sync_dist=True,
                )
            total, count = total + loss_sum, count + n
        for (name, subset), (loss_sum, n) in self._val_subset_sums.items():
            key = VAL_SOURCE_SUBSET_LOSS.format(source=name, subset=subset)
            # Not synced: a rank whose val batches held no such token would leave the collective
            # unmatched; under DDP the logged value is rank 0's tokens only.
            self.log(key, loss_sum / n, on_step=False, on_epoch=True)
        if count:
            val = total / count
            self.log(VAL_LOSS, val, prog_bar=True, on_step=False, on_epoch=True, sync_dist=True)
            self.log(VAL_PPL, math.exp(min(val, 50.0)), on_step=False, on_epoch=True, sync_dist=True)
