"""Command-line overrides checked against the typed schema and the config groups, in one line.

Hydra's own errors for a typo are three lines and advise ``+key=...``, which, for a key the
schema does not have, composes a config with a dead key and trains something else. Here an
override that names no key or group is refused with the closest valid one
(``experimnt=quickstart: no such key or group; did you mean experiment=quickstart?``), a
``+key=`` for a key the schema lacks is refused the same way, and Hydra's remaining
composition errors (a wrong type, an unknown option) become one line.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType

from kimi_lab.config.schema import RunConfig, SourceConfig
from kimi_lab.errors import ConfigError

# Mappings whose entries are free names but whose entries' keys are typed (checked later by
# to_run_config, but named here so a typo inside an entry gets its suggestion too).
ENTRY_SCHEMAS: dict[str, type] = {"data.sources": SourceConfig}

# group name -> its options ("zero_vision/rl" for a file in a sub-folder)
GroupOptions = Callable[[str], list[str]]


def parse(overrides: list[str]) -> list[Override]:
    from hydra.errors import OverrideParseException

    try:
        return OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as exn:
        raise ConfigError(one_line_hydra_error(exn)) from None


def first_of_sweeps(overrides: list[str]) -> list[str]:
    """Each sweep (``a=1,2``, ``range(...)``) replaced by its first value: one job's overrides."""
    out = []
    for o in parse(overrides):
        if o.is_sweep_override():
            prefix = {OverrideType.ADD: "+", OverrideType.FORCE_ADD: "++"}.get(o.type, "")
            out.append(f"{prefix}{o.key_or_group}={next(iter(o.sweep_string_iterator()))}")
        else:
            out.append(o.input_line or "")
    return out


def check_overrides(overrides: list[str], groups: list[str], options: GroupOptions) -> None:
    """Refuse an override that names no schema key or config group, naming the closest valid one."""
    for o in parse(overrides):
        key = o.key_or_group
        if o.package is not None or key == "hydra" or key.startswith(("hydra.", "hydra/")):
            continue  # Hydra checks its own keys; its errors are turned into one line later
        value = (o.input_line or "").partition("=")[2]
        if key in groups:
            _check_option(o, key, value, options(key))
        else:
            _check_key(o, key.split("."), value, groups)


def _check_option(o: Override, group: str, value: str, valid: list[str]) -> None:
    chosen = list(o.sweep_string_iterator()) if o.is_sweep_override() else [value]
    for option in chosen:
        if o.is_delete() or option in ("", "null") or option in valid:
            continue
        close = difflib.get_close_matches(option, valid, n=1, cutoff=0.5)
        hint = f"did you mean {group}={close[0]}?" if close else f"the options are {', '.join(sorted(valid))}"
        raise ConfigError(f"{o.input_line}: {group} has no option {option!r}; {hint}")


def _check_key(o: Override, path: list[str], value: str, groups: list[str]) -> None:
    node: Any = RunConfig
    in_entry = False
    for depth, part in enumerate(path):
        children = _children(node)
        if children is None:  # ``part`` names an entry of a mapping: any name
            mapping = ".".join(path[:depth])
            if mapping not in ENTRY_SCHEMAS:
                return  # a free mapping (phase.rl.tasks): any value too
            node, in_entry = ENTRY_SCHEMAS[mapping], True
            continue
        if part not in children:
            where = ".".join(path[:depth])
            names = list(children) + (groups if depth == 0 else [])
            close = difflib.get_close_matches(part, names, n=1, cutoff=0.6)
            if close:
                fixed = ".".join([*path[:depth], close[0], *path[depth + 1 :]])
                prefix = "~" if o.is_delete() else ("+" if in_entry and o.type == OverrideType.ADD else "")
                hint = f"did you mean {prefix}{fixed}{'' if o.is_delete() else '=' + value}?"
            else:
                hint = f"the keys {'of ' + where + ' ' if where else ''}are {', '.join(sorted(names))}"
            if children == {} and depth > 0:
                raise ConfigError(f"{o.input_line}: {where} is a value, not a section with keys")
            what = "no such key" + (" or group" if depth == 0 else "")
            if o.type in (OverrideType.ADD, OverrideType.FORCE_ADD) and not in_entry:
                what += " (the schema is typed: + adds no new key)"
            raise ConfigError(f"{o.input_line}: {what}; {hint}")
        node = children[part]


def _children(node: Any) -> dict[str, Any] | None:
    """The keys under a schema node and their types; None for a mapping whose keys are free."""
    node = _unwrap_optional(node)
    if dataclasses.is_dataclass(node):
        hints = typing.get_type_hints(node)
        return {f.name: hints[f.name] for f in dataclasses.fields(node)}
    if node is Any or typing.get_origin(node) in (dict, list) or node in (dict, list):
        return None
    return {}  # a value: nothing below it


def _unwrap_optional(t: Any) -> Any:
    if typing.get_origin(t) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(t) if a is not type(None)]
        return args[0] if len(args) == 1 else Any
    return t


def one_line_hydra_error(exn: BaseException) -> str:
    """Hydra's or OmegaConf's multi-line message as one line that names the key."""
    from hydra.errors import OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    lines = [line.strip() for line in str(exn).splitlines() if line.strip()]
    if isinstance(exn, OverrideParseException):
        why = [line for line in lines[1:] if not line.startswith("See ")]
        return f"cannot parse the override {exn.override!r}: {why[0] if why else lines[0]}"
    if len(lines) > 1 and lines[1].startswith("To append to your config use"):
        # a new entry of a free mapping (data.sources, phase.rl.tasks): + is the right advice here
        return f"{lines[0].rstrip('.')}: to add an entry, use {lines[1].rsplit(' ', 1)[-1]}"
    cause = exn.__cause__ if isinstance(exn.__cause__, OmegaConfBaseException) else exn
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        msg = str(getattr(cause, "msg", "") or cause).strip().splitlines()[0]
        return f"{cause.full_key}: {msg}"
    if not lines:
        return type(exn).__name__
    if any(line.startswith("Available options") for line in lines):
        at = next(i for i, line in enumerate(lines) if line.startswith("Available options"))
        listed = []
        for line in lines[at + 1 :]:
            if line.endswith(":"):  # "Config search path:" follows the options
                break
            listed.append(line)
        return f"{lines[0]}; the options are {', '.join(listed)}"
    if len(lines) == 1:
        return lines[0]
    return f"{lines[0]} {lines[1]}" if lines[0].endswith(".") else f"{lines[0]}: {lines[1]}"
