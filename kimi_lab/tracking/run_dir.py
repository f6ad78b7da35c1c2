"""The run-directory callback: expert load per step, status, and consistent files on resume.

- ``moe_load.parquet``: tokens and bias of every expert of every MoE layer at every
  logged step (real tokens only, summed over data-parallel ranks); ``layer`` is the model's
  layer index, as in ``attn_logits.parquet``.
- ``status.json``: running / finished / failed / interrupted, the step, final metrics.
- On resume, rows logged after the checkpoint's step are dropped, so the curves
  continue from the checkpoint instead of repeating the replayed steps.
- Files are flushed whenever a checkpoint is saved, so they match it.
- Logged steps: every ``log_every_n_steps``-th, and always the first and the last, so a run
  shorter than the interval still leaves its curves (``is_logged_step``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from kimi_lab.metrics import (
    ATTN_CLIPPED_HEAD_STEPS,
    ATTN_CLIPPED_HEADS,
    ATTN_LAYER_MAX_LOGIT,
    ATTN_LOGITS_FILE,
    ATTN_MAX_LOGIT,
    ATTN_VISION_MAX_LOGIT,
    MOE_DEAD_EXPERTS,
    MOE_IMBALANCE,
    MOE_IMBALANCE_MAX,
    MOE_LOAD_FILE,
    STATUS_FAILED,
    STATUS_FINISHED,
    STATUS_INTERRUPTED,
    STATUS_RUNNING,
)
from kimi_lab.tracking.contract import PhaseReport
from kimi_lab.tracking.parquet_logger import ParquetMetricsLogger
from kimi_lab.tracking.status import write_status
from kimi_lab.tracking.table import ATTN_LOGITS_SCHEMA, MOE_LOAD_SCHEMA, ParquetTable


def report(pl_module: L.LightningModule) -> PhaseReport:
    """The module as the run directory's files see it; one without that side of the contract
    (a renamed field, a module that is no ``PhaseModule``) is an error, never empty files."""
    if not isinstance(pl_module, PhaseReport):
        missing = [n for n in ("counters", "latest_moe_load", "pop_attn_logits") if not hasattr(pl_module, n)]
        raise TypeError(
            f"{type(pl_module).__name__} lacks {', '.join(missing)} of kimi_lab.tracking.contract.PhaseReport: "
            "the run directory's expert-load and attention-logit files would stay empty"
        )
    return pl_module


def is_logged_step(step: int, every: int, max_steps: int) -> bool:
    """Whether 0-based training step ``step`` is logged: every ``every``-th, the first and the last."""
    return step == 0 or (step + 1) % every == 0 or (max_steps > 0 and step == max_steps - 1)


class RunDirCallback(L.Callback):
    def __init__(self, run_dir: str | Path, experiment: str, log_every_n_steps: int) -> None:
        self.run_dir = Path(run_dir)
        self.experiment = experiment
        self.log_every = log_every_n_steps
        self.moe_load: ParquetTable | None = None
        self.attn_logits: ParquetTable | None = None
        self.started = time.time()
        self.ended: str | None = None  # STATUS_FINISHED / STATUS_INTERRUPTED once training has ended
        self._moe_logged_step = -1

    # ------------------------------------------------------------------ helpers
    def _parquet_loggers(self, trainer: L.Trainer) -> list[ParquetMetricsLogger]:
        return [lg for lg in trainer.loggers if isinstance(lg, ParquetMetricsLogger)]

    @rank_zero_only
    def _status(self, trainer: L.Trainer, status: str) -> None:
        final = {
            k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1
        }
        write_status(
            self.run_dir, status, self.experiment, trainer.global_step, trainer.max_steps, self.started, final
        )

    @rank_zero_only
    def _flush(self) -> None:
        for table in (self.moe_load, self.attn_logits):
            if table is not None:
                table.flush()

    # -------------------------------------------------------------------- hooks
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        report(pl_module)  # before any step: a module that cannot fill the run files is an error
        if trainer.is_global_zero:
            self.moe_load = ParquetTable(self.run_dir / MOE_LOAD_FILE, MOE_LOAD_SCHEMA)
            self.attn_logits = ParquetTable(self.run_dir / ATTN_LOGITS_FILE, ATTN_LOGITS_SCHEMA)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # global_step is restored from the checkpoint by now: forget the rows of the
        # steps that will be replayed (steps are 0-based: keep those < global_step).
        step = trainer.global_step - 1
        if trainer.is_global_zero:
            for table in (self.moe_load, self.attn_logits):
                if table is not None:
                    table.drop_after(step)
                    table.flush()
        for lg in self._parquet_loggers(trainer):
            lg.drop_after(step)
        self._status(trainer, STATUS_RUNNING)

    def _logged(self, trainer: L.Trainer, step: int) -> bool:
        return is_logged_step(step, self.log_every, trainer.max_steps)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        # Lightning logs a step when (step + 1) % trainer.log_every_n_steps == 0; for the first
        # and the last step (which that rule misses in short runs) the interval is 1 for that step.
        step = trainer.global_step  # the step this batch belongs to
        trainer.log_every_n_steps = 1 if self._logged(trainer, step) else self.log_every

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._log_attn_logits(trainer, pl_module)
        self._log_moe_load(trainer, pl_module)

    def _log_attn_logits(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = trainer.global_step - 1
        if step < 0 or not self._logged(trainer, step):
            return
        logits = report(pl_module).pop_attn_logits()
        if not logits:
            return
        values: dict[str, float] = {
            ATTN_CLIPPED_HEAD_STEPS: float(report(pl_module).counters.clipped_head_steps)
        }
        values[ATTN_CLIPPED_HEADS] = float(sum(int(c.sum()) for _, c in logits.values()))
        for tower, (max_LH, clipped_LH) in logits.items():
            if tower == "language_model":
                values[ATTN_MAX_LOGIT] = float(max_LH.max())
                for layer, row in enumerate(max_LH):
                    values[ATTN_LAYER_MAX_LOGIT.format(layer=layer)] = float(row.max())
            else:
                values[ATTN_VISION_MAX_LOGIT] = float(max_LH.max())
            if trainer.is_global_zero and self.attn_logits is not None:
                L_, H = max_LH.shape
                self.attn_logits.extend(
                    {
                        "step": [step] * (L_ * H),
                        "layer": [layer for layer in range(L_) for _ in range(H)],
                        "head": list(range(H)) * L_,
                        "max_logit": max_LH.reshape(-1).tolist(),
                        "clipped": clipped_LH.reshape(-1).tolist(),
                        "tower": [tower] * (L_ * H),
                    }
                )
        pl_module.log_dict(values, on_step=True, on_epoch=False)

    def _log_moe_load(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Steps are 0-based training-step indices, as Lightning labels the logged metrics.
        load = report(pl_module).latest_moe_load
        step = trainer.global_step - 1
        if load is None or load.step != step or not self._logged(trainer, step):
            return
        if step == self._moe_logged_step:  # the next step's first micro-batches (gradient accumulation)
            return
        self._moe_logged_step = step
        tokens_LE, bias_LE = load.tokens_LE, load.bias_LE
        per_layer = tokens_LE.max(1).values / tokens_LE.mean(1).clamp_min(1e-9)
        pl_module.log_dict(
            {
                MOE_IMBALANCE: per_layer.mean().item(),
                MOE_IMBALANCE_MAX: per_layer.max().item(),
                MOE_DEAD_EXPERTS: float((tokens_LE == 0).sum().item()),
            },
            on_step=True,
            on_epoch=False,
        )
        if trainer.is_global_zero and self.moe_load is not None:
            L_, E = tokens_LE.shape
            self.moe_load.extend(
                {
                    "step": [step] * (L_ * E),
                    "layer": [layer for layer in load.layers for _ in range(E)],  # the model's index
                    "expert": list(range(E)) * L_,
                    "tokens": tokens_LE.reshape(-1).long().tolist(),
                    "bias": bias_LE.reshape(-1).float().tolist(),
                }
            )

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self._flush()
        for lg in self._parquet_loggers(trainer):
            lg.save()
        # The checkpoint saved at the end of training comes after on_train_end: keep its verdict.
        self._status(trainer, self.ended or STATUS_RUNNING)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flush()
        interrupted = trainer.interrupted or (
            trainer.max_steps > 0 and trainer.global_step < trainer.max_steps and not trainer.fast_dev_run
        )
        self.ended = STATUS_INTERRUPTED if interrupted else STATUS_FINISHED
        self._status(trainer, self.ended)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._flush()
        for lg in self._parquet_loggers(trainer):
            lg.save()
        # A second Ctrl-C, or a scheduler's exit (SystemExit) while stopping, still reads as interrupted.
        stopped = isinstance(exception, (KeyboardInterrupt, SystemExit))
        self._status(trainer, STATUS_INTERRUPTED if stopped else STATUS_FAILED)
