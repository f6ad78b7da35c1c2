"""Training progress that fits where it runs.

On a terminal: a live tqdm bar (step, loss, tokens/s, the latest validation loss).
Elsewhere (CI, SLURM, ``nohup``, stdout redirected to a file) a bar would write
thousands of carriage-return updates into one line of the log, so instead one plain
log line per report: at every logged step (``trainer.log_every_n_steps``, plus the
first and the last) and after each validation, with step, loss, tokens/s, elapsed
time and ETA.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

import lightning as L
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

from kimi_lab.metrics import TRAIN_LOSS, TRAIN_TOKENS_PER_SEC, VAL_LOSS
from kimi_lab.tracking.run_dir import is_logged_step

SHOWN = {TRAIN_LOSS: "loss", TRAIN_TOKENS_PER_SEC: "tok/s", VAL_LOSS: "val_loss"}
log = logging.getLogger("kimi_lab.progress")


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


def format_duration(seconds: float) -> str:
    """``42s``, ``3m07s``, ``2h05m``: short enough for a progress line."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class LineProgress(ProgressBar):
    """One plain log line per report, never a carriage return."""

    def __init__(self, every: int) -> None:
        super().__init__()
        self.every = every
        self._enabled = True
        self._start: float | None = None
        self._start_step = 0
        self._reported = -1
        self._pending = False

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Timing starts here, after a resume has restored the step: the ETA counts this session's pace.
        self._start, self._start_step = time.perf_counter(), trainer.global_step

    def _value(self, trainer: L.Trainer, key: str) -> float | None:
        v = trainer.callback_metrics.get(key)
        return None if v is None else float(v)

    def line(self, trainer: L.Trainer) -> str:
        step, total = trainer.global_step, trainer.max_steps
        parts = [f"step {step}/{total}" if total > 0 else f"step {step}"]
        loss, tps, val = (self._value(trainer, k) for k in (TRAIN_LOSS, TRAIN_TOKENS_PER_SEC, VAL_LOSS))
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        if val is not None:
            parts.append(f"val_loss {val:.4f}")
        if tps is not None:
            parts.append(f"tok/s {tps:,.0f}")
        if self._start is not None:
            elapsed = time.perf_counter() - self._start
            parts.append(f"elapsed {format_duration(elapsed)}")
            done = step - self._start_step
            if total > 0 and done > 0:
                parts.append(f"eta {format_duration(elapsed / done * (total - step))}")
        return "  ".join(parts)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *_: Any) -> None:
        step = trainer.global_step - 1  # the 0-based step that just finished
        # The phase logs this step's throughput after the callbacks' hook: report at the
        # next hook, when every value of the step is in.
        if self._enabled and step > self._reported and is_logged_step(step, self.every, trainer.max_steps):
            self._reported, self._pending = step, True

    def _flush(self, trainer: L.Trainer) -> None:
        if self._pending:
            self._pending = False
            log.info(self.line(trainer))

    def on_train_batch_start(self, trainer: L.Trainer, *_: Any) -> None:
        self._flush(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flush(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flush(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._enabled and not trainer.sanity_checking:
            val = self._value(trainer, VAL_LOSS)
            if val is not None:
                log.info(f"validation at step {trainer.global_step}: val_loss {val:.4f}")


def progress_callback(every: int, stream: TextIO | None = None) -> ProgressBar:
    """A live bar when ``stream`` (stdout) is a terminal, else one line per report."""
    stream = sys.stdout if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        return StepProgressBar(refresh_rate=1)
    return LineProgress(every)
