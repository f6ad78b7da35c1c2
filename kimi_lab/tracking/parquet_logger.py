"""A Lightning logger that writes every logged scalar to ``metrics.parquet`` (step, key, value).

Being a logger, it sees exactly what wandb sees: whatever the phase ``self.log``s.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers.logger import Logger, rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only

from kimi_lab.metrics import METRICS_FILE
from kimi_lab.tracking.table import METRICS_SCHEMA, ParquetTable


class ParquetMetricsLogger(Logger):
    def __init__(self, run_dir: str | Path, flush_every: int = 20) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)
        self.flush_every = flush_every
        self._flush_next = False
        self._table: ParquetTable | None = None
        self._calls = 0

    @property
    def name(self) -> str:
        return "parquet"

    @property
    def version(self) -> str:
        return ""

    @property
    @rank_zero_experiment
    def experiment(self) -> ParquetTable:
        if self._table is None:
            self._table = ParquetTable(self.run_dir / METRICS_FILE, METRICS_SCHEMA)
        return self._table

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass  # the resolved config is in .hydra/config.yaml

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        table = self.experiment
        for key, value in metrics.items():
            if key == "epoch":
                continue
            value = float(value)
            if math.isfinite(value) or math.isnan(value):
                table.append(step=int(step or 0), key=key, value=value)
        self._calls += 1
        # Right after a checkpoint, Lightning logs the metrics of the step it just saved:
        # flush them at once, so a kill soon after the checkpoint does not lose that row.
        if self._calls % self.flush_every == 0 or self._flush_next:
            table.flush()
            self._flush_next = False

    @rank_zero_only
    def drop_after(self, step: int) -> None:
        self.experiment.drop_after(step)
        self.experiment.flush()

    @rank_zero_only
    def save(self) -> None:
        if self._table is not None:
            self._table.flush()
        self._flush_next = True

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.save()
