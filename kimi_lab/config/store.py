"""Hydra plumbing: register the schemas, find ``conf/``, compose outside an app."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from kimi_lab.config.schema import RunConfig, source_config
from kimi_lab.errors import ConfigError

# conf/ sits beside the package in a source checkout (the README installs with -e).
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"

_registered = False


def register_schemas() -> None:
    """Make ``run_schema`` available to ``conf/config.yaml``'s defaults list."""
    global _registered
    if _registered:
        return
    ConfigStore.instance().store(name="run_schema", node=RunConfig)
    _registered = True


def _conf_dir() -> Path:
    if not (CONF_DIR / "config.yaml").is_file():
        raise ConfigError(
            f"config folder not found at {CONF_DIR}: install kimi_lab from a source checkout "
            "with `pip install -e .`"
        )
    return CONF_DIR


def compose(overrides: list[str] | None = None) -> DictConfig:
    """Compose ``conf/config.yaml`` with command-line style overrides (for tools and tests)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_schemas()
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(_conf_dir()), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides or []))


def to_run_config(cfg: DictConfig | dict[str, Any]) -> RunConfig:
    """Resolve interpolations and turn the composed config into typed dataclasses."""
    merged = OmegaConf.merge(OmegaConf.structured(RunConfig), cfg)
    obj = OmegaConf.to_object(merged)
    assert isinstance(obj, RunConfig)
    try:
        obj.data.sources = {name: source_config(name, v) for name, v in obj.data.sources.items()}
    except (KeyError, TypeError) as exn:
        raise ConfigError(str(exn.args[0])) from None
    return obj
