"""Phase ``pretrain``: next-token prediction over packed text (joint text-vision later)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from kimi_lab.errors import ConfigError
from kimi_lab.metrics import (
    TRAIN_AUX,
    TRAIN_CE,
    TRAIN_LOSS,
    TRAIN_SEQ_BALANCE,
    TRAIN_Z_LOSS,
    VAL_LOSS,
    VAL_PPL,
    VAL_SOURCE_LOSS,
)
from kimi_lab.phases.base import PhaseModule


class PretrainModule(PhaseModule):
    def on_fit_start(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if getattr(dm, "has_vision", False):
            vision = [n for n, m in dm.modalities.items() if m != "text"]
            raise ConfigError(
                f"data.sources {', '.join(vision)} hold images or video, but model {self.cfg.model.name} "
                "has no vision tower: train it on text sources only"
            )

    def _lm_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Any]:
        tokens = batch["tokens"]
        inputs, labels = tokens[:, :-1], tokens[:, 1:]
        out = self.model(inputs)
        # Loss on text targets only: never on placeholders, media markers or padding.
        mask = batch.get("loss_mask")
        logits = out.logits.float()
        if mask is not None:
            logits, labels = logits[mask], labels[mask]
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        return ce, out

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        ce, out = self._lm_loss(batch)
        loss = ce + out.aux_loss
        self.count_step_tokens(batch["tokens"][:, 1:].numel())
        self.log(TRAIN_LOSS, loss, prog_bar=True, on_step=True, on_epoch=False)
        self.log(TRAIN_CE, ce, on_step=True, on_epoch=False)
        self.log(TRAIN_AUX, out.aux_loss, on_step=True, on_epoch=False)
        if out.router_metrics:
            self.log(TRAIN_SEQ_BALANCE, out.router_metrics["seq_balance_loss"], on_step=True, on_epoch=False)
            self.log(TRAIN_Z_LOSS, out.router_metrics["router_z_loss"], on_step=True, on_epoch=False)
        return loss

    def validation_step(
        self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        ce, _ = self._lm_loss(batch)
        n = batch["tokens"].shape[0]
        # val/loss over all sources (token-weighted by batch), and one curve per source.
        self.log(
            VAL_LOSS,
            ce,
            prog_bar=True,
            on_step=False,
            on_epoch=True,
            sync_dist=True,
            batch_size=n,
            add_dataloader_idx=False,
        )
        names = getattr(self.trainer.datamodule, "val_names", [])
        if dataloader_idx < len(names):
            key = VAL_SOURCE_LOSS.format(source=names[dataloader_idx])
            self.log(
                key, ce, on_step=False, on_epoch=True, sync_dist=True, batch_size=n, add_dataloader_idx=False
            )

    def on_validation_epoch_end(self) -> None:
        val = self.trainer.callback_metrics.get(VAL_LOSS)
        if val is not None:
            self.log(VAL_PPL, math.exp(min(float(val), 50.0)), on_step=False, on_epoch=True, sync_dist=True)
