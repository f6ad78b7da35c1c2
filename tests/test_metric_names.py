"""Metric keys and run-directory file names are written in kimi_lab/metrics.py and nowhere else.

A literal elsewhere is a second source: rename the key in metrics.py and that writer or
reader drifts apart from the rest, and an ``if key in ...`` guard turns the drift into a
silently empty plot. This test reads every module of the package (its AST, so comments
and prose in docstrings do not count) for string literals and f-strings that spell a key.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import kimi_lab.metrics as metrics
from tests.conftest import REPO

PACKAGES = ("kimi_lab", "dashboards", "benchmarks", "data_pipelines")
NAMES = {k: v for k, v in vars(metrics).items() if k.isupper() and isinstance(v, str)}
KEYS = {v for v in NAMES.values() if "/" in v and not v.startswith(".")}
FILES = {v for v in NAMES.values() if re.fullmatch(r"[\w-]+\.(parquet|json|jsonl|ckpt)", v)}
# the shape of a metric key, for keys that are not (yet) in metrics.py; "data/" is left out
# because data folders share the prefix (its keys are caught by KEYS)
KEY_SHAPE = re.compile(r"(train|val|moe|attn|rl|parl|source|family)(/[\w{}.-]+)+")


def _spelled(node: ast.AST) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):  # f"val/{name}/loss" reads as "val/{}/loss"
        return "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
    return None


def names_spelled_outside_metrics(root: Path = REPO) -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            if path == root / "kimi_lab" / "metrics.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                s = _spelled(node)
                if s is None:
                    continue
                is_key = s in KEYS or KEY_SHAPE.fullmatch(s) or s.startswith(metrics.DATA_SKIPPED_PREFIX)
                if is_key or s in FILES:
                    found.append(f"{path.relative_to(root)}:{node.lineno}: {s!r}")
    return found


def test_metric_and_file_names_come_from_metrics_only() -> None:
    assert names_spelled_outside_metrics() == []


def test_the_check_sees_literals_and_f_strings(tmp_path: Path) -> None:
    module = tmp_path / "kimi_lab" / "reports" / "drift.py"
    module.parent.mkdir(parents=True)
    module.write_text(
        '"""Reads train/loss (prose is fine)."""\n'
        'A = "parl/r_perf"\n'
        'B = f"val/{1}/loss"\n'
        'C = "moe_load.parquet"\n'
        'D = "data/skipped/too_long"\n'
        'E = "data/text"  # a folder, not a key\n'
    )
    found = names_spelled_outside_metrics(tmp_path)
    assert [f.rsplit(": ", 1)[1] for f in found] == [
        "'parl/r_perf'",
        "'val/{}/loss'",
        "'moe_load.parquet'",
        "'data/skipped/too_long'",
    ]
