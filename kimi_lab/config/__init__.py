"""Typed configs: schemas, Hydra registration, cross-field validation."""

from kimi_lab.config.schema import (
    PRECISIONS,
    AttentionConfig,
    DataConfig,
    LoggerConfig,
    ModelConfig,
    MoEBackend,
    MoEConfig,
    PhaseConfig,
    RopeConfig,
    RopeScaling,
    RunConfig,
    TrainerConfig,
)
from kimi_lab.config.store import CONF_DIR, compose, register_schemas, to_run_config
from kimi_lab.config.validate import validate_model, validate_run

__all__ = [
    "CONF_DIR",
    "PRECISIONS",
    "AttentionConfig",
    "DataConfig",
    "LoggerConfig",
    "MoEBackend",
    "MoEConfig",
    "ModelConfig",
    "PhaseConfig",
    "RopeConfig",
    "RopeScaling",
    "RunConfig",
    "TrainerConfig",
    "compose",
    "register_schemas",
    "to_run_config",
    "validate_model",
    "validate_run",
]
