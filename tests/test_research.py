"""The research-suite multiruns (sparsity_scaling, heads_vs_layers) at a tiny size, and their reports."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kimi_lab.reports.heads_vs_layers import forward_flops_per_token, k2_flops_increase
from kimi_lab.reports.seeds import Spread, compare, group, seeds_note
from kimi_lab.reports.sparsity_scaling import steps_to_reach
from tests.conftest import run_cli

SHRINK = [
    "model=tiny",
    "trainer.max_steps=10",
    "trainer.log_every_n_steps=2",
    "trainer.val_check_interval=5",
    "trainer.checkpoint_every_n_steps=10",
    "phase.schedule.warmup_steps=2",
    "data.seq_len=32",
    "data.batch_size=4",
    "trainer.limit_val_batches=2",
]


def _sweep(tiny_overrides: list[str], tmp_path: Path, experiment: str, *sweep: str) -> Path:
    res = run_cli(
        "train",
        "--multirun",
        *tiny_overrides,
        f"experiment={experiment}",
        "seed=0",  # one seed is enough to test the sweep
        *SHRINK,
        *sweep,
        cwd=tmp_path,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    (folder,) = list((tmp_path / "runs" / experiment / "multirun").iterdir())
    return folder


def test_sparsity_scaling_sweeps_experts_and_reports(tiny_overrides: list[str], tmp_path: Path) -> None:
    folder = _sweep(tiny_overrides, tmp_path, "sparsity_scaling", "model.moe.n_routed_experts=4,8")
    report = json.loads((folder / "report.json").read_text())
    assert [a["experts"] for a in report["arms"]] == [4, 8]
    assert all(a["sparsity"] == a["experts"] / 4 for a in report["arms"])  # the experiment's top-4
    # the gap curve: one point per common evaluation, tokens per expert of the 8-expert arm
    curve = report["gap_curve"]
    assert [c["step"] for c in curve] == [4, 9] and curve[-1]["tokens_per_expert"] == 10 * 4 * 32 * 4 / 8
    # the target is the densest arm's final loss, which it reaches itself; the sparser arm may not
    target = report["target_val_loss"]
    assert target == report["arms"][0]["final_val_loss"] and report["arms"][0]["steps_to_target"] <= 10
    assert [r["experts"] for r in report["flop_ratios"]] == [4, 8] and len(report["overtakes"]) == 1
    text = (folder / "report.md").read_text()
    assert "1.69x / 1.39x / 1.15x" in text and "One seed per arm" in text
    assert (folder / "sparsity_scaling.png").stat().st_size > 10_000
    # the report can be rebuilt from the folder alone
    res = run_cli("report", str(folder), cwd=tmp_path)
    assert res.returncode == 0 and "report.md" in res.stdout

    # a later sweep of another seed joins the report (--also); here a copy relabelled seed=1
    later = tmp_path / "seed1"
    shutil.copytree(folder, later)
    for job in ("0", "1"):
        cfg = later / job / ".hydra" / "config.yaml"
        text_cfg = cfg.read_text()
        assert "\nseed: 0\n" in text_cfg
        cfg.write_text(text_cfg.replace("\nseed: 0\n", "\nseed: 1\n"))
    res = run_cli("report", str(folder), "--also", str(later), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    both = json.loads((folder / "report.json").read_text())
    assert [(a["experts"], a["seed"]) for a in both["arms"]] == [(4, 0), (4, 1), (8, 0), (8, 1)]
    assert "Seeds 0, 1; values are the mean over seeds [min, max]" in (folder / "report.md").read_text()
    # sweeps of different experiments cannot share a report
    other = tmp_path / "other"
    shutil.copytree(later, other)
    for job in ("0", "1"):
        cfg = other / job / ".hydra" / "config.yaml"
        cfg.write_text(cfg.read_text().replace("experiment: sparsity_scaling", "experiment: qk_clip"))
    res = run_cli("report", str(folder), "--also", str(other), cwd=tmp_path)
    assert res.returncode == 2 and "only sweeps of one experiment" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_a_difference_is_claimed_only_beyond_the_seed_spread() -> None:
    assert compare(Spread((1.0, 1.1)), Spread((1.2, 1.3))) == "lower"
    assert compare(Spread((1.2, 1.3)), Spread((1.0, 1.1))) == "higher"
    assert compare(Spread((1.0, 1.25)), Spread((1.2, 1.3))) == "within spread"
    assert compare(Spread((1.0,)), Spread((2.0, 2.1))) == "one seed"
    rows = [{"arm": "a", "seed": s, "v": v} for s, v in ((0, 1.0), (1, float("nan")), (2, 3.0))]
    (a,) = group(rows, "arm", "v").values()
    assert a.values == (1.0, 3.0) and a.mean == 2.0 and a.fmt() == "2.000 [1.000, 3.000]"
    assert seeds_note(rows).startswith("Seeds 0, 1, 2;")
    assert seeds_note(rows[:1]).startswith("One seed per arm (seed 0)")


def test_heads_vs_layers_sweeps_heads_and_reports_flops(tiny_overrides: list[str], tmp_path: Path) -> None:
    folder = _sweep(tiny_overrides, tmp_path, "heads_vs_layers", "model.attention.n_heads=2,4")
    report = json.loads((folder / "report.json").read_text())
    arms = report["arms"]
    assert [a["heads"] for a in arms] == [2, 4] and all(a["layers"] == 4 for a in arms)
    # more heads cost more FLOPs, and far more at long context
    assert arms[1]["gflops_per_token_4096"] > arms[0]["gflops_per_token_4096"]
    grow_4k = arms[1]["gflops_per_token_4096"] / arms[0]["gflops_per_token_4096"]
    grow_128k = arms[1]["gflops_per_token_131072"] / arms[0]["gflops_per_token_131072"]
    assert grow_128k > grow_4k
    assert any("(the report: +83%)" in f for f in report["findings"])


def test_flops_formula_reproduces_k2_heads_claim() -> None:
    # K2: doubling 64 -> 128 heads costs +83% inference FLOPs at 128k context
    assert k2_flops_increase(131072) == pytest.approx(0.83, abs=0.05)
    from kimi_lab.config import compose, to_run_config

    k2 = to_run_config(compose(["model=k2"])).model
    # at short context the attention scores matter little: the increase is far smaller
    assert k2_flops_increase(1024) < 0.3
    assert forward_flops_per_token(k2, 0) == pytest.approx(2 * 32.86e9, rel=0.05)  # ~2 x active params


def test_steps_to_reach_interpolates() -> None:
    import pandas as pd

    val = pd.Series([5.0, 4.0, 3.0], index=[10, 20, 30])
    assert steps_to_reach(val, 3.5) == pytest.approx(25.0)
    assert steps_to_reach(val, 5.0) == 10.0
    assert steps_to_reach(val, 2.0) != steps_to_reach(val, 2.0)  # nan: never reached


def test_fusion_ablation_three_arms_equal_budget_and_report(
    tiny_overrides: list[str],
    tmp_path: Path,
    image_code_shards: Path,
    video_shards: Path,
    interleaved_shards: Path,
) -> None:
    base = [o for o in tiny_overrides if not o.startswith(("model=", "data.seq_len="))]
    res = run_cli(
        "train",
        "--multirun",
        *base,
        "experiment=fusion_ablation",
        "seed=0",  # one seed is enough to test the sweep
        "model=tiny-vl",
        f"data.sources.image_code.path={image_code_shards}",
        f"data.sources.video.path={video_shards}",
        f"data.sources.interleaved.path={interleaved_shards}",
        "data.seq_len=96",
        "data.vision.max_patches=144",
        "trainer.max_steps=10",
        "trainer.val_check_interval=2",
        "trainer.limit_val_batches=1",
        "trainer.log_every_n_steps=1",
        "phase.schedule.warmup_steps=1",
        cwd=tmp_path,
        timeout=900,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    (folder,) = list((tmp_path / "runs" / "fusion_ablation" / "multirun").iterdir())
    report = json.loads((folder / "report.json").read_text())
    arms = {a["arm"]: a for a in report["arms"]}
    assert list(arms) == ["early", "mid", "late"]
    assert [arms[a]["vision_start"] for a in arms] == [0.0, 0.5, 0.8]
    assert all(a["final_text_val_loss"] > 0 for a in arms.values())
    # the late arm sees no vision before 80% of training, the early arm from the start
    import pandas as pd

    from kimi_lab.metrics import DATA_VISION_RATIO_TARGET

    late = pd.read_parquet(folder / arms["late"]["job"] / "metrics.parquet")
    target = late[late.key == DATA_VISION_RATIO_TARGET].set_index("step").value
    assert (target[target.index < 8] == 0).all() and (target[target.index >= 8] == 0.5).all()
    assert arms["mid"]["text_before"] is not None  # the dip is measured around vision's arrival
    text = (folder / "report.md").read_text()
    assert "K2.5's table" in text and "| late | 80% | 50:50 |" in text


def test_vit3d_chunking_compares_joint_and_per_frame(
    tiny_overrides: list[str], tmp_path: Path, video_shards: Path
) -> None:
    base = [o for o in tiny_overrides if not o.startswith(("model=", "data.seq_len=", "data.sources."))]
    res = run_cli(
        "train",
        "--multirun",
        *base,
        "experiment=vit3d_chunking",
        "seed=0",  # one seed is enough to test the sweep
        "model=tiny-vl",
        f"data.sources.video.path={video_shards}",
        "data.seq_len=96",
        "data.vision.max_patches=144",
        "trainer.max_steps=6",
        "trainer.val_check_interval=3",
        "trainer.limit_val_batches=1",
        "phase.schedule.warmup_steps=1",
        cwd=tmp_path,
        timeout=900,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    (folder,) = list((tmp_path / "runs" / "vit3d_chunking" / "multirun").iterdir())
    report = json.loads((folder / "report.json").read_text())
    assert [a["arm"] for a in report["arms"]] == ["joint", "per_frame"]
    assert all(a["final_video_val_loss"] > 0 for a in report["arms"])
    # the loss on the captions' motion words alone, logged at validation and reported per arm
    assert all(a["final_motion_val_loss"] > 0 for a in report["arms"])
    assert report["findings"][0].startswith("Final video caption val loss: joint")
    assert report["findings"][1].startswith("Final val loss on the motion words alone")


def test_per_frame_attention_changes_video_but_not_images() -> None:
    from dataclasses import replace

    import torch

    from kimi_lab.config import compose, to_run_config
    from kimi_lab.model.vision.moonvit import MoonViT3D

    v = to_run_config(compose(["model=tiny-vl"])).model.vision
    torch.manual_seed(0)
    joint = MoonViT3D(v).eval()
    per_frame = MoonViT3D(replace(v, temporal_attention="per_frame")).eval()
    per_frame.load_state_dict(joint.state_dict())
    p = v.patch_size
    image = torch.randn(1 * 4 * 4, 3, p, p)
    video = torch.randn(4 * 4 * 4, 3, p, p)
    with torch.no_grad():
        img_j = joint(image, torch.tensor([[1, 4, 4]]))
        img_f = per_frame(image, torch.tensor([[1, 4, 4]]))
        vid_j = joint(video, torch.tensor([[4, 4, 4]]))
        vid_f = per_frame(video, torch.tensor([[4, 4, 4]]))
    assert torch.allclose(img_j, img_f, atol=1e-6)  # one frame: nothing to attend across
    assert vid_j.shape == vid_f.shape  # the same number of tokens for the LM
    assert not torch.allclose(vid_j, vid_f, atol=1e-4)  # frames no longer see each other


def test_parl_report_judges_curves_and_evaluations_against_their_standard_errors(tmp_path: Path) -> None:
    """The PARL report's verdicts on synthetic numbers: a curve rising well past its spread, one flat."""
    import pandas as pd

    from kimi_lab import metrics as M
    from kimi_lab.reports.parl_ablation import write

    rows = []
    # full: r_perf rises, no idle sub-agents; perf: r_perf flat, idle sub-agents pile up (spurious parallelism)
    for arm, slope, idle in (("full", 0.05, 0.0), ("perf", 0.0, 0.1)):
        for step in range(16):
            noise = 0.01 * (-1) ** step
            rows += [
                {"step": step, "key": M.PARL_PERF, "value": 0.2 + slope * step + noise},
                {"step": step, "key": M.PARL_DELEGATED, "value": 0.5 + noise},
                {"step": step, "key": M.PARL_EXCESS, "value": idle * step + noise},
            ]
        (tmp_path / arm).mkdir()
        pd.DataFrame(rows[-48:]).to_parquet(tmp_path / arm / M.METRICS_FILE)

    def ev(score: float, excess: float) -> dict:
        e = {"n": 20, "score": score, "delegated": 0.5, "subagents": 3.0, "excess_subagents": excess}
        e |= {"finish": 1.0, "critical_steps": 8.0, "over_budget": 0.0, "items_assigned": 1.0}
        return e | {f"{k}_se": 0.02 for k in list(e) if k != "n"}

    evals = {"sft": ev(0.6, 0.0), "ws_serial": ev(0.3, 0.0), "full": ev(0.5, 0.0), "perf": ev(0.31, 0.5)}
    sweep = [
        {"width": 4, "policy": p, "n": 4, "score": 1.0, "score_se": 0.0, "critical_steps": c,
         "critical_steps_se": 0.0, "subagents": 4.0, "budget": 10.0}
        for p, c in (("single", 17.0), ("fanout", 8.0), ("trained", 8.5))
    ]  # fmt: skip
    meta = {
        "scale": {"model": "tiny"}, "seed": 0, "minutes": 1.0, "trained": "full",
        "arms": {"full": {"start": "ws_serial"}, "perf": {"start": "ws_serial"}},
        "failure_modes": {"spurious_parallelism": ("perf", "full"), "serial_collapse": ("perf", "full")},
    }  # fmt: skip
    sub = ev(0.1, 0.0) | {"subagent": "ckpt:x"}
    text = write(tmp_path, evals, sweep, sub, meta).read_text()
    assert "scripted oracles" in text and "± 0.02" in text
    report = json.loads((tmp_path / "report.json").read_text())
    v = report["verdicts"]
    # r_perf: the mean of 0.2 + 0.05 * step over 16 steps (the +-0.01 noise cancels), noise 0.01 a step
    assert v["full_curves"]["r_perf"]["mean"] == pytest.approx(0.575)
    assert v["perf_curves"]["r_perf"]["mean"] == pytest.approx(0.2)
    assert v["perf_curves"]["r_perf"]["noise"] == pytest.approx(0.02 / 2**0.5, rel=0.05)  # steps of +-0.02
    assert v["spurious_parallelism"]["shows"] and v["spurious_parallelism"]["moved"]  # idle rose past noise
    assert not v["serial_collapse"]["shows"]  # delegation is the same flat curve in both arms
    assert v["full"]["score_diff"] == pytest.approx(0.2)  # against its own warm start, ws_serial
    assert "2.0x fewer" in text  # single / trained critical steps at width 4


def test_gap_curve_finds_where_more_experts_start_to_win(tmp_path: Path) -> None:
    import pandas as pd

    from kimi_lab.reports.runs import Run
    from kimi_lab.reports.sparsity_scaling import gap_curve, turning_point

    def run(experts: int, seed: int, losses: list[float]) -> Run:
        steps = [9, 19, 29, 39]
        rows = [(s, "val/loss", v) for s, v in zip(steps, losses, strict=True)]
        rows += [(s, "train/tokens", (s + 1) * 100.0) for s in steps]
        config = {
            "seed": seed,
            "model": {
                "hidden_size": 10,
                "moe": {"n_routed_experts": experts, "top_k": 2, "expert_ffn_dim": 5},
            },
        }
        return Run(tmp_path, config, pd.DataFrame(rows, columns=["step", "key", "value"]))

    dense = [run(4, s, [5.0, 4.0, 3.5, 3.2]) for s in (0, 1)]
    sparse = [run(16, s, [5.2, 4.05, 3.4, 3.0 + 0.01 * s]) for s in (0, 1)]
    curve = gap_curve(dense + sparse)
    assert [round(c["gap"], 3) for c in curve] == [0.2, 0.05, -0.1, -0.195]
    # 40 steps x 100 tokens x top-2 over 16 experts; 3 x 10 x 5 parameters per expert
    assert curve[-1]["tokens_per_expert"] == 500 and curve[-1]["tokens_per_expert_param"] == 500 / 150
    assert "overtakes the densest at step 29" in turning_point(curve) and "375 tokens" in turning_point(curve)
    behind = gap_curve(dense + [run(16, s, [5.2, 4.2, 3.6, 3.25]) for s in (0, 1)])
    assert "stays behind" in turning_point(behind) and "(closing)" in turning_point(behind)

    # every arm against the next denser one, and the steps each needs to reach the densest arm's loss
    from kimi_lab.reports.sparsity_scaling import findings, flop_ratios, overtakes, summarise

    middle = [run(8, s, [5.1, 3.6, 3.1, 3.05]) for s in (0, 1)]
    runs = dense + middle + sparse
    passes = overtakes(runs)
    assert [(p["denser"], p["sparser"], p["step"]) for p in passes] == [(4, 8, 19), (8, 16, 39)]
    assert passes[0]["tokens_per_expert"] == 20 * 100 * 2 / 8  # the 8-expert arm's experts at step 19
    rows, target = summarise(runs)
    assert target == pytest.approx(3.35)  # the 4-expert arm's final loss: mean of its last two evaluations
    ratios = {r["experts"]: r for r in flop_ratios(rows)}
    # 3.35 is reached by 4 experts at step 34 (3.5 -> 3.2), by 8 at 24 (3.6 -> 3.1)
    assert ratios[4]["steps"] == pytest.approx(34.0) and ratios[8]["steps"] == pytest.approx(24.0)
    assert ratios[8]["densest_over_this"] == pytest.approx(34 / 24)
    assert ratios[4]["this_over_sparsest"] == pytest.approx(34 / ratios[16]["steps"])
    assert ratios[4]["k2"] is None  # K2's ratios stand beside the default sweep's arms only
    text = " ".join(findings(rows, target, passes=passes))
    assert (
        "8-expert arm overtakes the 4-expert at step 19" in text and "1.42x fewer than the 4-expert" in text
    )


def test_heads_report_compares_each_setting_and_follows_the_gap(tmp_path: Path) -> None:
    """A follow-up pair (a longer run) joins the report as its own setting; the gap over training
    says whether it narrows."""
    import pandas as pd

    from kimi_lab.reports.heads_vs_layers import findings, summarise
    from kimi_lab.reports.runs import Run

    def run(heads: int, seed: int, steps: int, losses: list[float]) -> Run:
        at = [steps // 4 * i - 1 for i in range(1, 5)]
        config = {
            "seed": seed,
            "trainer": {"max_steps": steps},
            "data": {"batch_size": 8, "seq_len": 256},
            "model": {"name": "small", "n_layers": 4, "hidden_size": 256, "attention": {"n_heads": heads}},
        }
        frame = pd.DataFrame(
            [(s, "val/loss", v) for s, v in zip(at, losses, strict=True)], columns=["step", "key", "value"]
        )
        return Run(tmp_path / f"{heads}-{seed}-{steps}", config, frame)

    runs = [
        run(4, 0, 400, [6.0, 5.2, 4.9, 4.74]),
        run(4, 1, 400, [6.0, 5.2, 4.9, 4.75]),
        run(8, 0, 400, [6.3, 5.4, 5.0, 4.78]),
        run(8, 1, 400, [6.3, 5.4, 5.0, 4.80]),
        run(4, 0, 1600, [5.0, 4.4, 4.1, 4.00]),
        run(8, 0, 1600, [5.2, 4.45, 4.1, 3.98]),
    ]
    rows = summarise(runs)
    assert [(r["steps"], r["heads"]) for r in rows] == [
        (400, 4),
        (400, 4),
        (400, 8),
        (400, 8),
        (1600, 4),
        (1600, 8),
    ]
    text = findings(rows, runs)
    short = next(f for f in text if f.startswith("8 heads vs 4 heads") and "400 steps" in f)
    long = next(f for f in text if f.startswith("8 heads vs 4 heads") and "1600 steps" in f)
    assert "higher with more heads, higher beyond the seed spread" in short
    assert "lower with more heads, from one seed (no claim)" in long
    trend = next(f for f in text if f.startswith("Over training (1600 steps"))
    assert "narrowing" in trend and "-0.020" in trend  # the gap at the last evaluation
