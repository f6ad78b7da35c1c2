"""Reading finished runs back: config, metrics and per-head tables of every job of a multirun."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from kimi_lab.errors import ConfigError
from kimi_lab.metrics import ATTN_LOGITS_FILE, CONFIG_FILE, METRICS_FILE, MOE_LOAD_FILE


@dataclass
class Run:
    path: Path
    config: dict[str, Any]
    metrics: pd.DataFrame  # step, key, value
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)

    def series(self, key: str) -> pd.Series:
        m = self.metrics[self.metrics.key == key]
        return m.set_index("step").value.sort_index()

    def final(self, key: str, last: int = 1) -> float:
        s = self.series(key)
        return float(s.iloc[-last:].mean()) if len(s) else float("nan")

    def get(self, dotted: str) -> Any:
        node: Any = self.config
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node


def load_run(path: Path) -> Run:
    cfg_file = path / CONFIG_FILE
    if not cfg_file.is_file() or not (path / METRICS_FILE).is_file():
        raise ConfigError(f"{path}: not a finished kimi_lab run (needs {CONFIG_FILE} and {METRICS_FILE})")
    config = OmegaConf.to_container(OmegaConf.load(cfg_file), resolve=False)
    run = Run(path, config, pd.read_parquet(path / METRICS_FILE))  # type: ignore[arg-type]
    for name in (ATTN_LOGITS_FILE, MOE_LOAD_FILE):
        if (path / name).is_file():
            run.tables[name] = pd.read_parquet(path / name)
    return run


def load_multirun(folder: str | Path) -> list[Run]:
    """The jobs of a Hydra multirun folder (subfolders 0, 1, ...), in job order."""
    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(f"{root}: no such folder")
    jobs = sorted((p for p in root.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    if not jobs:
        raise ConfigError(f"{root}: no job folders (0, 1, ...): pass a multirun folder")
    return [load_run(j) for j in jobs]


def plot_series(runs: list[Run], key: str, arm: str, path: Path, title: str) -> None:
    """One curve of metric ``key`` per run, labelled by the config value at ``arm`` and the seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for run in runs:
        s = run.series(key)
        ax.plot(s.index, s.values, label=f"{arm.rsplit('.', 1)[-1]}={run.get(arm)} (seed {run.get('seed')})")
    ax.set(title=title, xlabel="step", ylabel="loss")
    save_figure(fig, path, legends=(ax,))


def save_figure(fig: Any, path: Path, legends: tuple[Any, ...] = ()) -> None:
    """The reports' one look: a light grid on every axis, the legends asked for, a 110-dpi PNG."""
    import matplotlib.pyplot as plt

    for ax in fig.axes:
        ax.grid(alpha=0.3)
    for ax in legends:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
