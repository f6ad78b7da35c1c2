"""``kimi-lab report`` of a multi-stage experiment folder (zero_vision, parl_ablation, vision_coding).

Those experiments save every evaluation under ``eval/`` and their settings in
``report.json``; the report is rebuilt from them without re-running anything.
"""

from __future__ import annotations

import json
from pathlib import Path

from kimi_lab.errors import ConfigError


def rewrite(root: Path) -> Path:
    saved = json.loads((root / "report.json").read_text())
    meta = saved.get("meta") or {}
    evals = {p.stem: json.loads(p.read_text()) for p in sorted((root / "eval").glob("*.json"))}
    if saved.get("experiment") == "vision_coding":
        from kimi_lab.reports.vision_coding import ARMS
        from kimi_lab.reports.vision_coding import write as write_vision_coding

        if missing := [a for a in ARMS if a not in evals]:
            raise ConfigError(f"{root}: evaluations missing for {', '.join(missing)} (rerun the experiment)")
        return write_vision_coding(root, {a: evals[a] for a in ARMS}, meta)
    if "sweep" in saved:  # parl_ablation
        from kimi_lab.reports.parl_ablation import write

        sweep = evals.pop("width_sweep", saved["sweep"])
        return write(root, evals, sweep, evals.pop("model_subagents", {}), meta)
    from kimi_lab.reports.zero_vision import BLANK, VARIANTS, write

    missing = [v for v in VARIANTS if v not in evals]
    if missing:
        raise ConfigError(f"{root}: evaluations missing for {', '.join(missing)} (rerun the experiment)")
    return write(root, {v: evals[v] for v in (*VARIANTS, BLANK) if v in evals}, meta)
