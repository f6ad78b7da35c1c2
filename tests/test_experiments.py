"""`kimi-lab experiment zero_vision --scale tiny`: the whole chain runs, reports, and resumes."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import REPO, run_cli


def test_zero_vision_chain_runs_end_to_end_and_resumes(sandbox: None, tmp_path: Path) -> None:
    out, data = tmp_path / "zv", tmp_path / "data"
    args = ("experiment", "zero_vision", "--scale", "tiny", "--out", str(out), "--data-dir", str(data))
    res = run_cli(*args, cwd=REPO, timeout=900)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert [r["variant"] for r in report["rows"]] == ["pretrain", "sft_text", "sft_visual", "rl"]
    assert all(0 <= r["vision_reward"] <= 1 and 0 <= r["text_reward"] <= 1 for r in report["rows"])
    assert len(report["findings"]) == 4 and "n=2" in report["findings"][0]
    assert (out / "zero_vision.png").stat().st_size > 0
    text = (out / "report.md").read_text()
    assert "## What this run shows" in text and "text-only SFT" in text
    # a second call keeps every finished stage and evaluation
    again = run_cli(*args, cwd=REPO, timeout=300)
    assert again.returncode == 0 and again.stdout.count("finished earlier, kept") == 4
