"""`kimi-lab experiment zero_vision --scale tiny`: the whole chain runs, reports, and resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli


def test_zero_vision_chain_runs_end_to_end_and_resumes(sandbox: None, tmp_path: Path) -> None:
    out, data = tmp_path / "zv", tmp_path / "data"
    args = ("experiment", "zero_vision", "--scale", "tiny", "--out", str(out), "--data-dir", str(data))
    res = run_cli(*args, cwd=REPO, timeout=900)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert [r["variant"] for r in report["rows"]] == ["pretrain", "sft_text", "sft_visual", "rl"]
    assert all(0 <= r["vision_reward"] <= 1 and 0 <= r["text_reward"] <= 1 for r in report["rows"])
    assert len(report["findings"]) == 5 and "n=2" in report["findings"][0]
    assert (
        "images blanked" in report["findings"][4] and "paired over the same prompts" in report["findings"][4]
    )
    assert [c["status"] for c in report["claims"]] and (out / "eval" / "sft_text_blank.json").is_file()
    stages = report["meta"]["stages"]  # [minutes from the start, minutes]
    assert {"data", "pretrain", "sft_text", "sft_visual", "rl", "eval_rl"} <= set(stages)
    (t0, d0), (t1, _) = stages["sft_text"], stages["sft_visual"]
    # SFTs side by side, after the pre-training (the report rounds minutes to 0.01: one step of slack)
    assert t1 < t0 + d0 and stages["pretrain"][0] + stages["pretrain"][1] <= min(t0, t1) + 0.01
    episodes = json.loads((out / "eval" / "sft_text.json").read_text())["episodes"]
    assert sorted(e["source"] for e in episodes) == ["text", "text", "vision", "vision"]
    assert (out / "zero_vision.png").stat().st_size > 0
    text = (out / "report.md").read_text()
    assert "## What this run shows" in text and "text-only SFT" in text
    # a second call keeps every finished stage and evaluation
    again = run_cli(*args, cwd=REPO, timeout=300)
    assert again.returncode == 0 and again.stdout.count("finished earlier, kept") == 4
    assert "evaluating" not in again.stdout  # every evaluation, the control included, was kept


def test_vision_coding_chain_runs_end_to_end_and_resumes(tmp_path: Path) -> None:
    out, data = tmp_path / "vc", tmp_path / "data"
    args = ("experiment", "vision_coding", "--scale", "tiny", "--out", str(out), "--data-dir", str(data))
    res = run_cli(*args, cwd=REPO, timeout=900)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert [r["arm"] for r in report["rows"]] == ["code", "caption"]
    for row in report["rows"]:
        assert row["screenshot"]["n"] == row["recording"]["n"] == 2 and row["all"]["n"] == 4
        assert 0 <= row["all"]["reward"] <= 1 and 0 <= row["all"]["render_rate"] <= 1
    assert report["claim"]["status"] in ("confirmed", "contradicted", "not judged")
    assert report["differences"]["all"]["paired"] and report["differences"]["all"]["n"] == 4
    # the control saw the same pictures and clips with captions, never their code
    caption = data / "vision_coding-tiny" / "page_recordings_caption"
    assert json.loads((caption / "manifest.json").read_text())["pairs"] == "caption"
    text = (out / "report.md").read_text()
    assert "## K2.5's claim at this scale" in text and (out / "vision_coding_examples.png").stat().st_size > 0
    (out / "report.md").unlink()  # kimi-lab report rebuilds it from the saved evaluations
    assert run_cli("report", str(out), cwd=REPO).returncode == 0 and (out / "report.md").is_file()


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
        assert {M.PARL_PERF, M.PARL_DELEGATED, M.PARL_EXCESS, M.PARL_TRUNCATED} <= set(m.key)
    m = pd.read_parquet(out / "perf" / "metrics.parquet")
    assert (m[m.key == M.PARL_LAMBDA1].value == 0).all() and (m.key == M.PARL_TRUNCATED).any()
    for e in report["evals"].values():  # a greedy held-out episode is traced into the run's swarm/ folder
        assert e["truncated_turns"] >= 0 and set(e["rows"][0]) >= {"task", "score", "critical_steps"}
    traces = sorted((out / "perf" / "swarm").glob("eval-*.jsonl"))
    assert len(traces) == 2 and json.loads(traces[0].read_text().splitlines()[-1])["kind"] == "finish"
    from tests.swarm.test_runtime import _dashboard_functions

    dash = _dashboard_functions()  # the swarm page draws a trained episode on the critical-step axis
    frame, bad, problem = dash["load_trace"](traces[0])
    bars = dash["spans"](frame, "step")
    turns = bars[bars["agent"] == M.SWARM_ORCHESTRATOR]
    assert bad == 0 and problem is None and (turns["end"] - turns["start"] == 1).all() and len(turns) >= 1
    text = (out / "report.md").read_text()
    assert (
        "## What this run shows" in text and "scripted oracles" in text and "`index` action language" in text
    )
    assert (out / "parl_ablation.png").stat().st_size > 0
    again = run_cli(*args, cwd=REPO, timeout=300)
    assert again.returncode == 0 and again.stdout.count("finished earlier, kept") == len(stages)
    # kimi-lab report rebuilds the report from the saved evaluations
    (out / "report.md").unlink()
    res = run_cli("report", str(out), cwd=REPO)
    assert res.returncode == 0 and (out / "report.md").is_file()


def test_parl_ablation_verdicts_claim_only_beyond_two_standard_errors() -> None:
    """The report's failure-mode and warm-start sentences from synthetic curves and evaluations."""
    import pandas as pd

    from kimi_lab import metrics as M
    from kimi_lab.reports.parl_ablation import CURVES, findings

    def curve(delegated: list[float], excess: list[float]) -> pd.DataFrame:
        n = len(delegated)
        frame = pd.DataFrame({k: [0.5] * n for k in CURVES}, index=range(n))
        frame[M.PARL_DELEGATED], frame[M.PARL_EXCESS] = delegated, excess
        return frame

    noisy = [0.5, 0.6] * 8
    cur = {
        "perf": curve([1.0, 0.9] * 4 + [0.1, 0.0] * 4, [0.0] * 16),  # delegation collapses
        "full": curve(noisy, [0.0] * 16),  # only noise
        "spawn_parallel": curve([1.0] * 16, [2.0, 2.2] * 8),  # excess holds
        "spawn_full": curve([1.0] * 16, [2.0, 2.2] * 4 + [0.0, 0.2] * 4),  # excess falls
    }
    rows = [
        {"task": f"t{i}", "score": float(i % 2), "delegated": 1.0, "excess_subagents": 0.0} for i in range(48)
    ]
    base = {"n": 48.0, "score": 0.5, "score_se": 0.07, "delegated": 1.0, "delegated_se": 0.0,
            "excess_subagents": 0.0, "excess_subagents_se": 0.0, "subagents": 4.0, "items_assigned": 1.0,
            "truncated_turns": 0.0, "rows": rows}  # fmt: skip
    meta = {
        "arms": {"perf": {"start": "sft"}},
        "failure_modes": {"serial_collapse": ("perf", "full"), "spurious_parallelism": ("spawn_parallel", "spawn_full")},
    }  # fmt: skip
    better = {**base, "score": 0.9, "rows": [{**r, "score": 1.0} for r in rows]}
    out, verdicts = findings({"sft": base, "perf": better}, [], {}, cur, meta)
    assert "0.50 ± 0.07" in out[0] and "at or above the 0.5 target" in out[0]
    assert verdicts["perf"]["score_diff"] == 0.5 and verdicts["perf"]["score_se"] > 0  # paired over 48 tasks
    assert "higher beyond two standard errors" in next(o for o in out if o.startswith("PARL r_perf only"))
    assert verdicts["serial_collapse"]["moved"] and verdicts["serial_collapse"]["apart_from_full"]
    # excess holds under r_parallel and falls under the full reward: shown by the gap at the end
    sp = verdicts["spurious_parallelism"]
    assert not sp["moved"] and sp["apart_from_full"] and sp["shows"] and sp["end_gap"] == pytest.approx(2.0)
    assert any(
        o.startswith("Serial collapse (") and "shows: the share of episodes delegating fell" in o for o in out
    )
    assert any("shows against the full reward: the arm ends above it" in o for o in out)
    # the same curves for both arms: nothing to claim
    same = findings({}, [], {}, {**cur, "spawn_parallel": cur["spawn_full"]}, meta)[1]
    assert not same["spurious_parallelism"]["shows"]
    # noise alone is no verdict: every curve's step-to-step noise is reported with its mean
    assert (
        verdicts["full_curves"]["delegation"]["diff"] == 0 and verdicts["full_curves"]["r_perf"]["noise"] == 0
    )


def _eval(rewards: dict[str, list[float]]) -> dict:
    episodes = [
        {"id": f"{src}{i}", "source": src, "reward": r}
        for src, rs in rewards.items()
        for i, r in enumerate(rs)
    ]
    summary = {f"source/{s}": {"n": len(rs), "reward": sum(rs) / len(rs)} for s, rs in rewards.items()}
    return {"summary": summary, "episodes": episodes}


def test_zero_vision_differences_are_paired_over_prompts_and_judge_the_claims() -> None:
    from kimi_lab.reports.zero_vision import claims, difference

    # b beats a by 0.1 on every prompt: the prompts' own spread (0 to 0.9) is no noise for the pair
    a = [i / 10 for i in range(10)] * 20
    b = [r + 0.1 for r in a]
    d = difference({"a": _eval({"vision": a}), "b": _eval({"vision": b})}, "a", "b", "vision")
    assert d.paired and d.n == 200 and d.se < 1e-9 and abs(d.diff - 0.1) < 1e-9 and d.verdict == "higher"
    # the same means as two unrelated samples: the unpaired error is far larger
    old = {
        k: {"summary": v["summary"]}
        for k, v in {"a": _eval({"vision": a}), "b": _eval({"vision": b})}.items()
    }
    u = difference(old, "a", "b", "vision")
    assert not u.paired and u.se > 0.04 and u.verdict == "higher"
    # a difference inside two standard errors is not judged; each claim reads its own direction
    noisy = [0.0, 1.0] * 100
    flipped = [1.0, 0.0] * 99 + [0.0, 1.0]
    n = difference({"a": _eval({"vision": noisy}), "b": _eval({"vision": flipped})}, "a", "b", "vision")
    assert n.verdict == "not distinguishable"
    lower = difference({"a": _eval({"vision": b}), "b": _eval({"vision": a})}, "a", "b", "vision")
    table = claims({"transfer": d, "traces": d, "rl_vision": d, "rl_text": lower})
    assert [c["status"] for c in table] == ["confirmed", "contradicted", "contradicted"]
    table = claims({"transfer": n, "traces": lower, "rl_vision": d, "rl_text": n})
    assert [c["status"] for c in table] == ["not judged", "confirmed", "partly confirmed"]


def test_an_evaluation_without_a_source_is_an_error_not_a_nan() -> None:
    from kimi_lab.errors import KimiLabError
    from kimi_lab.reports.zero_vision import difference

    renamed = _eval({"vision": [1.0, 0.0]})
    renamed["summary"] = {"src/vision": renamed["summary"]["source/vision"]}
    renamed.pop("episodes")  # no per-prompt records: the summary is all there is
    with pytest.raises(
        KimiLabError, match=r"the evaluation of a has no 'source/vision' \(its groups: src/vision\)"
    ):
        difference({"a": renamed, "b": renamed}, "a", "b", "vision")


def test_zero_vision_budget_says_what_an_unjudged_difference_would_need() -> None:
    import math

    from kimi_lab.reports.zero_vision import budget, budget_sentence, difference

    a = [0.0] * 200
    b = [1.0 if i in (3, 70, 150) else 0.0 for i in range(200)]  # +0.015, inside two standard errors
    d = difference({"a": _eval({"vision": a}), "b": _eval({"vision": b})}, "a", "b", "vision")
    assert d.verdict == "not distinguishable"
    need = budget(d, steps=100)
    var = d.se**2 * d.n  # the paired differences' variance
    # the fewest prompts at which the same difference clears two standard errors
    assert 2 * math.sqrt(var / need["prompts"]) < 0.015 <= 2 * math.sqrt(var / (need["prompts"] - 1))
    assert need["steps"] == math.ceil(100 * 2 * d.se / 0.015) and need["detectable"] == 2 * d.se
    assert "264 prompts per source" in budget_sentence("traces", need, "sft")
    # +0.015 is against "visual traces hurt" (a lower reward), in the direction of "RL helps"
    assert "(against the claim)" in budget_sentence("traces", need, "sft")
    assert "(the claim's direction)" in budget_sentence("rl_vision", need, "rl")
    # both models alike on every prompt: no number of prompts can tell them apart
    same = budget(difference({"a": _eval({"vision": a}), "b": _eval({"vision": a})}, "a", "b", "vision"))
    assert same["prompts"] is None and "training budget limits" in budget_sentence("rl_text", same, "rl")


def test_run_jobs_runs_ready_jobs_side_by_side_and_stops_on_failure() -> None:
    import threading
    import time

    import pytest

    from kimi_lab.errors import KimiLabError
    from kimi_lab.experiments.stages import Job, run_jobs

    lock, running, peak, order = threading.Lock(), [0], [0], []

    def job(name: str, fail: bool = False):
        def work() -> str:
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
                order.append(name)
            time.sleep(0.05)
            with lock:
                running[0] -= 1
            if fail:
                raise RuntimeError(f"{name} failed")
            return name.upper()

        return work

    jobs = [Job("a", job("a")), Job("b", job("b")), Job("c", job("c"), after=("a",)), Job("d", job("d"))]
    assert run_jobs(jobs, slots=2) == {"a": "A", "b": "B", "c": "C", "d": "D"}
    assert peak[0] == 2 and set(order[:2]) == {"a", "b"} and order.index("c") > order.index("a")
    order.clear()
    failing = [Job("a", job("a", fail=True)), Job("b", job("b")), Job("c", job("c"), after=("a",))]
    with pytest.raises(RuntimeError, match="a failed"):
        run_jobs(failing, slots=2)
    assert "c" not in order  # nothing waiting on a failed job starts
    with pytest.raises(KimiLabError, match="unknown or repeated"):
        run_jobs([Job("a", job("a"), after=("x",))], slots=1)
