"""Reading run directories for the dashboard: no torch, cached, and forgiving.

Only ``kimi_lab.metrics`` is imported from kimi_lab (the names of files and keys),
so the dashboard starts in a second. Every reader returns ``(value, problem)``:
a missing or corrupt file becomes a one-line message on the page, never an
exception.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st
import yaml

from kimi_lab import metrics as M

DEFAULT_RUNS_DIR = "runs"


def runs_dir() -> Path:
    """RUNS_DIR from the command line (``-- --runs-dir DIR``), the environment, or ./runs."""
    args = sys.argv[1:]
    if "--runs-dir" in args and args.index("--runs-dir") + 1 < len(args):
        return Path(args[args.index("--runs-dir") + 1])
    return Path(os.environ.get("KIMI_LAB_RUNS_DIR", DEFAULT_RUNS_DIR))


def data_dir() -> Path:
    return Path(os.environ.get("KIMI_LAB_DATA_DIR", "data"))


@dataclass
class RunInfo:
    path: Path
    name: str  # relative to the runs directory
    experiment: str
    status: str
    step: int | None
    sweep: Path | None  # the multirun folder when this run is one of its jobs
    config: dict[str, Any] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


@st.cache_data(show_spinner=False)
def _read_yaml(path: str, mtime: float) -> tuple[Any, str | None]:
    try:
        return yaml.safe_load(Path(path).read_text()), None
    except (OSError, yaml.YAMLError) as exn:
        return None, f"{path}: unreadable ({type(exn).__name__})"


@st.cache_data(show_spinner=False)
def _read_parquet(path: str, mtime: float) -> tuple[pd.DataFrame | None, str | None]:
    try:
        return pd.read_parquet(path), None
    except Exception as exn:  # pyarrow raises many kinds for a corrupt file
        return (
            None,
            f"{Path(path).name} is unreadable ({type(exn).__name__}); it may be corrupt or still being written",
        )


def read_table(run: Path, name: str) -> tuple[pd.DataFrame | None, str | None]:
    path = run / name
    if not path.is_file():
        return None, f"this run has no {name}"
    return _read_parquet(str(path), _mtime(path))


def read_config(run: Path) -> tuple[dict[str, Any], str | None]:
    path = run / M.CONFIG_FILE
    if not path.is_file():
        return {}, f"this run has no {M.CONFIG_FILE}"
    cfg, problem = _read_yaml(str(path), _mtime(path))
    return (cfg if isinstance(cfg, dict) else {}), problem


def read_status(run: Path) -> dict[str, Any]:
    path = run / M.STATUS_FILE
    try:
        status = json.loads(path.read_text())
        return status if isinstance(status, dict) else {}
    except (OSError, json.JSONDecodeError):
        return {}


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def find_runs(root: Path) -> list[RunInfo]:
    """Every run under ``root`` (single runs and multirun jobs), newest first."""
    if not root.is_dir():
        return []
    found = []
    for cfg in root.rglob(M.CONFIG_FILE):
        run = cfg.parent.parent
        found.append(run)
    for status in root.rglob(M.STATUS_FILE):
        if status.parent not in found:
            found.append(status.parent)
    infos = []
    for run in found:
        cfg, _ = read_config(run)
        status = read_status(run)
        overrides, _ = (
            _read_yaml(str(run / M.OVERRIDES_FILE), _mtime(run / M.OVERRIDES_FILE))
            if (run / M.OVERRIDES_FILE).is_file()
            else ([], None)
        )
        sweep = run.parent if run.name.isdigit() and run.parent.parent.name == "multirun" else None
        infos.append(
            RunInfo(
                path=run,
                name=str(run.relative_to(root)),
                experiment=str(cfg.get("experiment") or status.get("experiment") or run.parent.name),
                status=status["status"] if status.get("status") in M.RUN_STATUSES else "unknown",
                step=status.get("step"),
                sweep=sweep,
                config=cfg,
                overrides=[str(o) for o in (overrides or [])],
                final={k: v for k, v in (status.get("final") or {}).items() if isinstance(v, (int, float))},
            )
        )
    infos.sort(key=lambda r: _mtime(r.path), reverse=True)
    return infos


@st.cache_data(show_spinner=False)
def _read_json(path: str, mtime: float) -> tuple[Any, str | None]:
    try:
        return json.loads(Path(path).read_text()), None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exn:
        return None, f"{Path(path).name} is unreadable ({type(exn).__name__})"


def read_harness_results(run: Path) -> tuple[pd.DataFrame, list[str]]:
    """``kimi-lab evaluate``'s results in this run (lm-eval's JSON under ``lm_eval/``): one row
    per checkpoint, task and metric, newest evaluation first; unreadable files are problems."""
    rows, problems = [], []
    files = sorted((run / M.HARNESS_DIR).glob(f"*/{M.HARNESS_RESULTS_GLOB}"), key=_mtime, reverse=True)
    for path in files:
        data, problem = _read_json(str(path), _mtime(path))
        if problem or not isinstance(data, dict) or not isinstance(data.get("results"), dict):
            problems.append(f"{path.relative_to(run)}: {problem or 'not lm-eval results'}")
            continue
        model_args = (data.get("config") or {}).get("model_args") or {}
        checkpoint = model_args.get("pretrained") if isinstance(model_args, dict) else None
        n_samples = data.get("n-samples") or {}
        for task, values in data["results"].items():
            if not isinstance(values, dict):
                continue
            for key, value in values.items():
                metric, _, flt = key.partition(",")
                if metric.endswith("_stderr") or metric in ("alias", "name", "sample_len"):
                    continue
                if not isinstance(value, int | float) or isinstance(value, bool):
                    continue
                stderr = values.get(f"{metric}_stderr,{flt}")
                rows.append(
                    {
                        "checkpoint": Path(str(checkpoint or data.get("model_name") or "?")).name,
                        "task": task,
                        "metric": metric if flt in ("", "none") else f"{metric} ({flt})",
                        "value": float(value),
                        "stderr": float(stderr) if isinstance(stderr, int | float) else None,
                        "n": (n_samples.get(task) or {}).get("effective"),
                        "evaluated": path.stem.removeprefix("results_"),
                    }
                )
    return pd.DataFrame(rows), problems


def series(metrics: pd.DataFrame, key: str) -> pd.Series:
    m = metrics[metrics["key"] == key]
    return m.set_index("step")["value"].sort_index()


def ema(values: pd.Series, smoothing: float) -> pd.Series:
    """TensorBoard-style exponential smoothing (0 = none)."""
    return values.ewm(alpha=1 - smoothing, adjust=False).mean() if 0 < smoothing < 1 else values


def default_run(runs: list[RunInfo]) -> RunInfo | None:
    """What a page shows first: of the newest experiment's runs, the one that trained longest
    (the newest of those), so a smoke run made after a real one is not what greets you."""
    if not runs:
        return None
    newest = max(runs, key=lambda r: _mtime(r.path)).experiment
    return max((r for r in runs if r.experiment == newest), key=lambda r: (r.step or 0, _mtime(r.path)))


def short_labels(names: list[str]) -> dict[str, str]:
    """Each run name cut to the part that tells it apart from the others: the path parts all
    names share at the front go (``quickstart/2026-12-05_12-14-34`` -> ``12-14-34`` beside
    ``12-15-41``); a bare job number keeps the part before it (``12-20-00/0``)."""
    if len(names) < 2:
        return {n: n for n in names}
    parts = {n: re.findall(r"[^/_]+[/_]?", n) for n in names}
    common = 0
    while all(len(p) > common + 1 and p[common] == parts[names[0]][common] for p in parts.values()):
        common += 1
    labels = {}
    for n, p in parts.items():
        start = common - 1 if p[common:] and p[common].isdigit() and common > 0 else common
        labels[n] = "".join(p[start:]).rstrip("/_")
    return labels


def layer_name(layer: int, first_k_dense: Any) -> str:
    """A model layer as every page names it: its index in the model, MoE layers marked."""
    if not isinstance(first_k_dense, int):
        return str(layer)
    return f"{layer} (MoE)" if layer >= first_k_dense else f"{layer} (dense)"


def pick_run(
    runs: list[RunInfo], label: str = "run", key: str = "run", need: str | None = None
) -> RunInfo | None:
    """A run selector (newest first, ``default_run`` selected); ``need`` lists only runs that have that file."""
    candidates = [r for r in runs if need is None or (r.path / need).exists()]
    if not candidates:
        return None
    names = [r.name for r in candidates]
    first = default_run(candidates)
    choice = st.selectbox(label, names, index=names.index(first.name) if first else 0, key=key)
    return candidates[names.index(choice)]
