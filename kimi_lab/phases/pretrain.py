"""Phase ``pretrain``: next-token prediction over packed text (joint text-vision later)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from kimi_lab.metrics import (
    TRAIN_AUX,
    TRAIN_CE,
    TRAIN_LOSS,
    TRAIN_SEQ_BALANCE,
    TRAIN_Z_LOSS,
    VAL_LOSS,
    VAL_PPL,
)
from kimi_lab.phases.base import PhaseModule


class PretrainModule(PhaseModule):
    def _lm_loss(self, tokens: torch.Tensor) -> tuple[torch.Tensor, Any]:
        inputs, labels = tokens[:, :-1], tokens[:, 1:]
        out = self.model(inputs)
        ce = F.cross_entropy(out.logits.float().reshape(-1, out.logits.shape[-1]), labels.reshape(-1))
        return ce, out

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        tokens = batch["tokens"]
        ce, out = self._lm_loss(tokens)
        loss = ce + out.aux_loss
        self.count_step_tokens(tokens[:, 1:].numel())
        self.log(TRAIN_LOSS, loss, prog_bar=True, on_step=True, on_epoch=False)
        self.log(TRAIN_CE, ce, on_step=True, on_epoch=False)
        self.log(TRAIN_AUX, out.aux_loss, on_step=True, on_epoch=False)
        if out.router_metrics:
            self.log(TRAIN_SEQ_BALANCE, out.router_metrics["seq_balance_loss"], on_step=True, on_epoch=False)
            self.log(TRAIN_Z_LOSS, out.router_metrics["router_z_loss"], on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        ce, _ = self._lm_loss(batch["tokens"])
        self.log(VAL_LOSS, ce, prog_bar=True, on_step=False, on_epoch=True, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        val = self.trainer.callback_metrics.get(VAL_LOSS)
        if val is not None:
            self.log(VAL_PPL, math.exp(min(float(val), 50.0)), on_step=False, on_epoch=True, sync_dist=True)
