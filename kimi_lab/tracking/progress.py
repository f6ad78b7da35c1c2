"""A compact progress bar: step, loss, tokens/s and the latest validation loss."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

from kimi_lab.metrics import TRAIN_LOSS, TRAIN_TOKENS_PER_SEC, VAL_LOSS

SHOWN = {TRAIN_LOSS: "loss", TRAIN_TOKENS_PER_SEC: "tok/s", VAL_LOSS: "val_loss"}


class StepProgressBar(TQDMProgressBar):
    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        out: dict[str, Any] = {}
        for key, short in SHOWN.items():
            if key in metrics:
                value = float(metrics[key])
                out[short] = f"{value:,.0f}" if key == TRAIN_TOKENS_PER_SEC else f"{value:.3f}"
        return out

    def init_validation_tqdm(self) -> Tqdm:
        return Tqdm(disable=True)  # validation is short; its loss shows on the main bar

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        super().on_train_epoch_start(trainer)
        self.train_progress_bar.set_description("train")
        self.train_progress_bar.unit = "step"
