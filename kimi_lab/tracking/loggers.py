"""Loggers for a run: always the run directory's metrics.parquet, plus wandb or CSV."""

from __future__ import annotations

import logging
import netrc
import os
import uuid
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, Logger

from kimi_lab.config.schema import LoggerKind, RunConfig, WandbMode
from kimi_lab.metrics import WANDB_ID_FILE
from kimi_lab.tracking.parquet_logger import ParquetMetricsLogger

log = logging.getLogger(__name__)


def wandb_key_configured() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def resolve_wandb_mode(mode: WandbMode) -> str:
    if mode == WandbMode.auto:
        env = os.environ.get("WANDB_MODE")
        if env in ("offline", "online", "disabled"):
            return env
        return "online" if wandb_key_configured() else "offline"
    return mode.value


def wandb_run_id(run_dir: Path) -> str:
    """The run's wandb id: created once, then reused by every resume of this run directory."""
    path = run_dir / WANDB_ID_FILE
    if path.is_file():
        return path.read_text().strip()
    run_id = uuid.uuid4().hex[:12]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(run_id + "\n")
    return run_id


def build_loggers(cfg: RunConfig, run_dir: Path, config_dict: dict[str, Any]) -> list[Logger]:
    loggers: list[Logger] = [ParquetMetricsLogger(run_dir)]
    kind = cfg.logger.kind
    if kind == LoggerKind.csv:
        loggers.append(CSVLogger(save_dir=str(run_dir), name="csv", version=""))
    elif kind == LoggerKind.wandb:
        from lightning.pytorch.loggers import WandbLogger

        mode = resolve_wandb_mode(cfg.logger.mode)
        if mode != "disabled":
            run_id = wandb_run_id(run_dir)
            log.info("wandb: %s run %s in %s", mode, run_id, run_dir / "wandb")
            loggers.append(
                WandbLogger(
                    project=cfg.logger.project,
                    entity=cfg.logger.entity,
                    name=f"{cfg.experiment}/{run_dir.name}",
                    id=run_id,
                    resume="allow",
                    save_dir=str(run_dir),
                    mode=mode,
                    tags=list(cfg.logger.tags),
                    config=config_dict,
                    log_model=False,
                )
            )
    return loggers


def finish_wandb() -> None:
    """Close any wandb run, so one failed job of a multirun cannot poison the next."""
    try:
        import wandb
    except ImportError:  # pragma: no cover
        return
    if wandb.run is not None:
        wandb.finish()
