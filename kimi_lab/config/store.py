"""Hydra plumbing: register the schemas, find ``conf/``, compose outside an app."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


@contextmanager
def _initialized() -> Iterator[tuple[list[str], Callable[[str], list[str]]]]:
    """Hydra initialised on ``conf/``; yields its config groups and a group's options."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_schemas()
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(_conf_dir()), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()

        def options(group: str) -> list[str]:
            found = list(loader.get_group_options(group))
            for sub in loader.list_groups(group):
                found += [f"{sub}/{o}" for o in options(f"{group}/{sub}")]
            return found

        yield [g for g in loader.list_groups("") if g != "hydra"], options


def check(overrides: list[str]) -> None:
    """Every override names a schema key or a config group option (sweeps too), or a
    ``ConfigError`` names the closest valid one."""
    from kimi_lab.config.overrides import check_overrides

    with _initialized() as (groups, options):
        check_overrides(list(overrides), groups, options)


def compose(overrides: list[str] | None = None) -> DictConfig:
    """Compose ``conf/config.yaml`` with command-line style overrides (for tools and tests).

    An override that names no key or group, or that Hydra cannot apply, is a ``ConfigError``
    in one line that names the key (and the closest valid one)."""
    from hydra import compose as hydra_compose
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from kimi_lab.config.overrides import check_overrides, one_line_hydra_error

    overrides = list(overrides or [])
    with _initialized() as (groups, options):
        check_overrides(overrides, groups, options)
        try:
            return hydra_compose(config_name="config", overrides=overrides)
        except (HydraException, OmegaConfBaseException) as exn:
            raise ConfigError(one_line_hydra_error(exn)) from None
        except AssertionError as exn:  # Hydra asserts on a key under a section that is null here
            raise ConfigError(
                f"{' '.join(overrides)}: {exn} (does an override set a key under a null section, "
                "such as model.vision of a text-only model?)"
            ) from None


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
