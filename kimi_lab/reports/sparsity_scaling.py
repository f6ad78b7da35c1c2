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

from kimi_lab.metrics import TRAIN_LOSS, VAL_LOSS
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


def findings(rows: list[dict[str, Any]], target: float) -> list[str]:
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
                "same tokens, each of N experts sees about top_k/N of them; a likely reason is that at this short "
                "budget the extra capacity is undertrained (K2's law is measured far closer to convergence)."
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
    out.append(seeds_note(rows))
    return out


def plot(runs: list[Run], rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
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
    for ax in (ax1, ax2):
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
    found = findings(rows, target)
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
            {"experiment": "sparsity_scaling", "target_val_loss": target, "arms": rows, "findings": found},
            indent=2,
        )
    )
    return out
