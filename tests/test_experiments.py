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


def test_parl_ablation_chain_runs_end_to_end_and_resumes(tmp_path: Path) -> None:
    out, data = tmp_path / "pa", tmp_path / "data"
    args = ("experiment", "parl_ablation", "--scale", "tiny", "--out", str(out), "--data-dir", str(data))
    res = run_cli(*args, cwd=REPO, timeout=900)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    from kimi_lab import metrics as M
    from kimi_lab.experiments.parl_ablation import SCALES, WARM_STARTS

    arms = SCALES["tiny"].arms
    report = json.loads((out / "report.json").read_text())
    stages = [*WARM_STARTS, *arms]
    assert set(report["evals"]) == set(stages)
    for e in report["evals"].values():
        assert e["n"] == 2 and 0 <= e["score"] <= 1 and 0 <= e["delegated"] <= 1 and e["score_se"] >= 0
    sweep = {(r["width"], r["policy"]): r for r in report["sweep"]}
    assert {p for _, p in sweep} == {
        "single",
        "fanout",
        "trained",
    }  # the trained orchestrator is measured too
    # the scripted baselines solve every task; one agent's path grows with width, the swarm's does not
    assert all(r["score"] == 1.0 for (_, p), r in sweep.items() if p != "trained")
    assert sweep[(4, "single")]["critical_steps"] > sweep[(2, "single")]["critical_steps"]
    assert sweep[(4, "fanout")]["critical_steps"] == sweep[(2, "fanout")]["critical_steps"]
    sub = report["model_subagents"]
    assert sub["subagent"].startswith("ckpt:") and sub["n"] == 1  # a model played the sub-agents
    import pandas as pd

    for arm in arms:  # each arm trained from its warm start and logged its reward parts
        m = pd.read_parquet(out / arm / "metrics.parquet")
        assert {M.PARL_PERF, M.PARL_DELEGATED, M.PARL_EXCESS} <= set(m.key)
    m = pd.read_parquet(out / "perf" / "metrics.parquet")
    assert (m[m.key == M.PARL_LAMBDA1].value == 0).all()
    text = (out / "report.md").read_text()
    assert "## What this run shows" in text and "Serial collapse" in text and "scripted oracles" in text
    assert (out / "parl_ablation.png").stat().st_size > 0
    again = run_cli(*args, cwd=REPO, timeout=300)
    assert again.returncode == 0 and again.stdout.count("finished earlier, kept") == len(stages)
    # kimi-lab report rebuilds the report from the saved evaluations
    (out / "report.md").unlink()
    res = run_cli("report", str(out), cwd=REPO)
    assert res.returncode == 0 and (out / "report.md").is_file()
