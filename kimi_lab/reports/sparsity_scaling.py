"""Report of ``experiment=sparsity_scaling``: loss vs total experts at fixed active parameters (K2 section 1).

K2's claim, from PAPER_NOTES: with the active experts fixed, more total experts
lower the loss at equal FLOPs; to reach a validation loss of 1.5, sparsity 48
needs 1.69x / 1.39x / 1.15x fewer FLOPs than sparsity 8 / 16 / 32. Here every arm
has the same active parameters, so FLOPs per step are equal and "FLOPs to reach a
loss" is "steps to reach it". The common target is the worst arm's final
validation loss, which every arm reaches.
"""

from __future__ import annotations

import json
import math
from itertools import pairwise
from pathlib import Path
from typing import Any

from kimi_lab.metrics import TRAIN_LOSS, TRAIN_TOKENS, VAL_LOSS
from kimi_lab.reports.runs import Run
from kimi_lab.reports.seeds import compare, describe, group, seeds_note

K2_FLOP_RATIOS = {8: 1.69, 16: 1.39, 32: 1.15}  # sparsity 48 vs sparsity 8 / 16 / 32


def steps_to_reach(val: Any, target: float) -> float:
    """First step whose validation loss is <= target, interpolated between evaluations."""
    prev_step, prev_loss = None, None
    for step, loss in val.items():
        if loss <= target:
            if prev_step is None or prev_loss is None or prev_loss == loss:
                return float(step)
            frac = (prev_loss - target) / (prev_loss - loss)
            return float(prev_step + frac * (step - prev_step))
        prev_step, prev_loss = step, loss
    return math.nan


def tokens_per_step(run: Run) -> float:
    """Training tokens per optimizer step: from the logged cumulative count, else the config."""
    tokens = run.series(TRAIN_TOKENS)
    if len(tokens) and tokens.index[-1] >= 0 and tokens.iloc[-1] > 0:
        return float(tokens.iloc[-1]) / (float(tokens.index[-1]) + 1)
    return float(run.get("data.batch_size") or 0) * float(run.get("data.seq_len") or 0)


def gap_curve(runs: list[Run]) -> list[dict[str, float]]:
    """The sparsest arm's validation loss minus the densest arm's at every common evaluation step
    (mean over the seeds both arms have), against the tokens each routed expert of the sparsest
    arm has seen by then: tokens x top_k / experts, per MoE layer. Negative: more experts win."""
    by_arm: dict[int, dict[Any, Run]] = {}
    for run in runs:
        by_arm.setdefault(int(run.get("model.moe.n_routed_experts")), {})[run.get("seed")] = run
    if len(by_arm) < 2:
        return []
    lo, hi = min(by_arm), max(by_arm)
    seeds = sorted(set(by_arm[lo]) & set(by_arm[hi]), key=lambda x: (x is None, x))
    if not seeds:
        return []
    sparse0 = by_arm[hi][seeds[0]]
    top_k = int(sparse0.get("model.moe.top_k"))
    expert_params = 3 * int(sparse0.get("model.hidden_size")) * int(sparse0.get("model.moe.expert_ffn_dim"))
    per_step = tokens_per_step(sparse0)
    gaps: dict[float, list[float]] = {}
    for seed in seeds:
        dense, sparse = by_arm[lo][seed].series(VAL_LOSS), by_arm[hi][seed].series(VAL_LOSS)
        for step in sorted(set(dense.index) & set(sparse.index)):
            gaps.setdefault(float(step), []).append(float(sparse[step]) - float(dense[step]))
    out = []
    for step, g in sorted(gaps.items()):
        per_expert = (step + 1) * per_step * top_k / hi
        out.append(
            {
                "step": step,
                "gap": sum(g) / len(g),
                "gap_lo": min(g),
                "gap_hi": max(g),
                "tokens_per_expert": per_expert,
                "tokens_per_expert_param": per_expert / expert_params,
            }
        )
    return out


def turning_point(curve: list[dict[str, float]]) -> str:
    """Where the sparsest arm starts to win for good, or how far it is from doing so."""
    if len(curve) < 3:
        return ""
    for i, point in enumerate(curve):
        if all(p["gap"] < 0 for p in curve[i:]):
            if i == 0:
                return "The sparsest arm is ahead of the densest at every evaluation."
            return (
                f"The sparsest arm overtakes the densest at step {point['step']:.0f}, once each of its routed "
                f"experts has seen about {point['tokens_per_expert']:,.0f} tokens "
                f"({point['tokens_per_expert_param']:.1f} per expert parameter), and stays ahead."
            )
    half = len(curve) // 2
    early = sum(p["gap"] for p in curve[:half]) / half
    late = sum(p["gap"] for p in curve[half:]) / (len(curve) - half)
    last = curve[-1]
    trend = "closing" if late < early else "not closing"
    return (
        f"The sparsest arm stays behind the densest: mean gap {early:+.3f} in the first half of the evaluations, "
        f"{late:+.3f} in the second ({trend}); at the end each of its routed experts has seen "
        f"{last['tokens_per_expert']:,.0f} tokens ({last['tokens_per_expert_param']:.1f} per expert parameter)."
    )


def summarise(runs: list[Run]) -> tuple[list[dict[str, Any]], float]:
    rows = []
    for run in runs:
        experts = int(run.get("model.moe.n_routed_experts"))
        top_k = int(run.get("model.moe.top_k"))
        rows.append(
            {
                "job": run.path.name,
                "seed": run.get("seed"),
                "experts": experts,
                "sparsity": experts / top_k,
                "final_val_loss": run.final(VAL_LOSS, last=2),
                "final_train_loss": run.final(TRAIN_LOSS, last=10),
                "val": run.series(VAL_LOSS),
            }
        )
    finals = [r["final_val_loss"] for r in rows if not math.isnan(r["final_val_loss"])]
    target = max(finals) if finals else math.nan  # every arm gets there
    for r in rows:
        r["steps_to_target"] = steps_to_reach(r.pop("val"), target)
    rows.sort(key=lambda r: (r["experts"], r["seed"] or 0))
    return rows, target


def _by_experts(rows: list[dict[str, Any]], key: str) -> dict[int, float]:
    return {e: v.mean for e, v in group(rows, "experts", key).items()}


def findings(
    rows: list[dict[str, Any]], target: float, curve: list[dict[str, float]] | None = None
) -> list[str]:
    loss = group(rows, "experts", "final_val_loss")
    steps = _by_experts(rows, "steps_to_target")
    experts = sorted(loss)
    out = []
    if len(experts) >= 2:
        means = {e: loss[e].mean for e in experts}
        falling = all(means[a] >= means[b] for a, b in pairwise(experts))
        rising = all(means[a] <= means[b] for a, b in pairwise(experts))
        if falling:
            shape = " — the mean falls monotonically as experts are added (K2's direction)."
        elif rising:
            shape = (
                " — the mean rises monotonically as experts are added, the opposite of K2's direction: with the "
                "same tokens, each of N experts sees top_k/N of them, so the sparser arms' experts are the "
                "less trained (the gap against tokens per expert is below)."
            )
        else:
            shape = " — not monotonic at this scale."
        out.append(
            "Final validation loss by total experts: "
            + ", ".join(f"{e}: {loss[e].fmt()}" for e in experts)
            + shape
        )
        lo, hi = experts[0], experts[-1]
        verdict = compare(loss[hi], loss[lo])
        if verdict != "one seed":
            out.append(f"{hi} vs {lo} experts: {hi} is {describe(verdict)}.")
        ratios = [
            f"{hi} vs {e} experts: {steps[e] / steps[hi]:.2f}x"
            for e in experts[:-1]
            if steps.get(hi) and not math.isnan(steps[e]) and steps[hi] > 0
        ]
        if ratios:
            out.append(
                f"FLOPs (= steps, active parameters being equal) to reach val loss {target:.3f}, "
                f"the sparsest arm against the others: {'; '.join(ratios)}. K2 (sparsity 48 vs 8 / 16 / 32): "
                "1.69x / 1.39x / 1.15x."
            )
    turn = turning_point(curve or [])
    if turn:
        out.append(turn)
    out.append(seeds_note(rows))
    return out


def plot(runs: list[Run], rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4))
    for run in runs:
        v = run.series(VAL_LOSS)
        ax1.plot(
            v.index,
            v.values,
            label=f"{run.get('model.moe.n_routed_experts')} experts (seed {run.get('seed')})",
        )
    ax1.set(title="validation loss", xlabel="step (equal FLOPs per step)", ylabel="loss")
    loss = _by_experts(rows, "final_val_loss")
    xs = sorted(loss)
    ax2.plot(xs, [loss[x] for x in xs], marker="o")
    ax2.set_xscale("log", base=2)
    ax2.set(
        title="final val loss vs total routed experts", xlabel="routed experts (active fixed)", ylabel="loss"
    )
    curve = gap_curve(runs)
    if curve:
        xs3 = [c["tokens_per_expert"] for c in curve]
        ax3.plot(xs3, [c["gap"] for c in curve], marker=".")
        ax3.fill_between(xs3, [c["gap_lo"] for c in curve], [c["gap_hi"] for c in curve], alpha=0.25)
        ax3.axhline(0, color="k", lw=0.8)
        ax3.set_xscale("log")
    ax3.set(
        title="sparsest minus densest arm (< 0: more experts win)",
        xlabel="tokens seen per routed expert of the sparsest arm",
        ylabel="val loss difference",
    )
    for ax in (ax1, ax2, ax3):
        ax.grid(alpha=0.3)
    ax1.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(runs: list[Run], folder: Path) -> Path:
    rows, target = summarise(runs)
    plot(runs, rows, folder / "sparsity_scaling.png")
    lines = [
        "# Sparsity scaling: loss vs total experts at fixed active parameters",
        "",
        "Same active experts, sizes, data, tokens and steps for every arm; only the routed expert count differs.",
        "",
        "| experts | sparsity | seed | final val loss | final train loss | steps to common target |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['experts']} | {r['sparsity']:g} | {r['seed']} | {r['final_val_loss']:.3f} | "
            f"{r['final_train_loss']:.3f} | {r['steps_to_target']:.0f} |"
        )
    curve = gap_curve(runs)
    found = findings(rows, target, curve)
    lines += ["", "![val loss](sparsity_scaling.png)", "", "## What this run shows", ""]
    lines += [f"- {f}" for f in found]
    lines += [
        "",
        "## K2's figures",
        "",
        "- With 8 active + 1 shared expert fixed, more total experts lower the loss at equal FLOPs; to reach",
        "  val loss 1.5, sparsity 48 needs 1.69x / 1.39x / 1.15x fewer FLOPs than sparsity 8 / 16 / 32.",
    ]
    out = folder / "report.md"
    out.write_text("\n".join(lines) + "\n")
    (folder / "report.json").write_text(
        json.dumps(
            {
                "experiment": "sparsity_scaling",
                "target_val_loss": target,
                "arms": rows,
                "gap_curve": curve,
                "findings": found,
            },
            indent=2,
        )
    )
    return out
