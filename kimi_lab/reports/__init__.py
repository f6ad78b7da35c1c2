"""``kimi-lab report MULTIRUN_DIR``: markdown, JSON and PNG reports of an experiment's multirun."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kimi_lab.errors import ConfigError
from kimi_lab.reports.runs import load_multirun

# multirun experiments (kimi-lab train --multirun experiment=NAME), one module each
MULTIRUN_WRITERS = ("qk_clip", "sparsity_scaling", "heads_vs_layers", "fusion_ablation", "vit3d_chunking")
# multi-stage experiments (kimi-lab experiment NAME): rebuilt from their saved evaluations
STAGED = ("zero_vision", "parl_ablation", "vision_coding")
WRITERS = MULTIRUN_WRITERS + STAGED


def write_report(folder: str | Path, also: tuple[str | Path, ...] = ()) -> Path:
    """Write the report for the experiment the multirun in ``folder`` ran.

    ``also`` names more multirun folders of the same experiment (a later ``seed=1`` sweep,
    say) whose jobs join the report, which is written into ``folder``.
    """
    import importlib

    root = Path(folder)
    if (root / "eval").is_dir() and (root / "report.json").is_file():
        if also:
            raise ConfigError(f"{root}: a multi-stage experiment's report cannot take other folders")
        # a multi-stage experiment (zero_vision, parl_ablation, vision_coding): rebuild from its evaluations
        from kimi_lab.reports.staged import rewrite

        return rewrite(root)
    runs = load_multirun(root)
    experiment = runs[0].get("experiment")
    for other in also:
        more = load_multirun(other)
        if more[0].get("experiment") != experiment:
            raise ConfigError(
                f"{other}: ran experiment {more[0].get('experiment')!r}, not {experiment!r}; "
                "only sweeps of one experiment can share a report"
            )
        runs += more
    if experiment in MULTIRUN_WRITERS:
        return importlib.import_module(f"kimi_lab.reports.{experiment}").write(runs, root)
    raise ConfigError(
        f"{root}: no report for experiment {experiment!r} (reports exist for: {', '.join(WRITERS)})"
    )


try:  # Hydra callback: write the report when the sweep ends
    from hydra.experimental.callback import Callback

    class ReportCallback(Callback):
        def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
            path = write_report(config.hydra.sweep.dir)
            print(f"report: {path}", flush=True)

except ImportError:  # pragma: no cover - hydra is a dependency
    pass
