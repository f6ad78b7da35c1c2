"""Report of ``experiment=sparsity_scaling``: loss vs total experts at fixed active parameters (K2 section 1).

K2's claim, from PAPER_NOTES: with the active experts fixed, more total experts
lower the loss at equal FLOPs; to reach a validation loss of 1.5, sparsity 48
needs 1.69x / 1.39x / 1.15x fewer FLOPs than sparsity 8 / 16 / 32. Here every arm
has the same active parameters, so FLOPs per step are equal and "FLOPs to reach a
loss" is "steps to reach it". The target is the densest arm's final validation
loss (mean over its seeds): each sparser arm's steps to reach it are its FLOPs
advantage. Each arm is also set against the next denser one: where it overtakes
it for good, in tokens seen per routed expert (the quantity the law turns on).
"""

from __future__ import annotations

import json
import math
from itertools import pairwise
from pathlib import Path
from typing import Any

from kimi_lab.metrics import TRAIN_LOSS, TRAIN_TOKENS, VAL_LOSS
from kimi_lab.reports.runs import Run, save_figure
from kimi_lab.reports.seeds import compare, describe, group, seeds_note

K2_FLOP_RATIOS = {8: 1.69, 16: 1.39, 32: 1.15}  # sparsity 48 vs sparsity 8 / 16 / 32
SWEEP = (8, 16, 32, 64)  # the default arms: 64 plays K2's sparsity 48 against 8 / 16 / 32


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


def _arms(runs: list[Run]) -> dict[int, dict[Any, Run]]:
    """Runs by routed expert count, then by seed."""
    by_arm: dict[int, dict[Any, Run]] = {}
    for run in runs:
        by_arm.setdefault(int(run.get("model.moe.n_routed_experts")), {})[run.get("seed")] = run
    return by_arm


def gap_curve(
    runs: list[Run], denser: int | None = None, sparser: int | None = None
) -> list[dict[str, float]]:
    """The sparser arm's validation loss minus the denser arm's at every common evaluation step
    (mean over the seeds both arms have), against the tokens each routed expert of the sparser
    arm has seen by then: tokens x top_k / experts, per MoE layer. Negative: more experts win.
    By default the sparsest arm against the densest."""
    by_arm = _arms(runs)
    if len(by_arm) < 2:
        return []
    lo = min(by_arm) if denser is None else denser
    hi = max(by_arm) if sparser is None else sparser
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


def overtake(curve: list[dict[str, float]]) -> dict[str, float] | None:
    """The first evaluation from which the sparser arm stays ahead (negative gap) to the end; None
    when it is behind at the last evaluation."""
    for point in curve:
        if all(p["gap"] < 0 for p in curve[curve.index(point) :]):
            return point
    return None


def turning_point(curve: list[dict[str, float]], denser: str = "densest", sparser: str = "sparsest") -> str:
    """Where the sparser arm starts to win for good, or how far it is from doing so."""
    if len(curve) < 3:
        return ""
    point = overtake(curve)
    if point is curve[0]:
        return f"The {sparser} arm is ahead of the {denser} at every evaluation."
    if point is not None:
        return (
            f"The {sparser} arm overtakes the {denser} at step {point['step']:.0f}, once each of its routed "
            f"experts has seen about {point['tokens_per_expert']:,.0f} tokens "
            f"({point['tokens_per_expert_param']:.1f} per expert parameter), and stays ahead."
        )
    half = len(curve) // 2
    early = sum(p["gap"] for p in curve[:half]) / half
    late = sum(p["gap"] for p in curve[half:]) / (len(curve) - half)
    last = curve[-1]
    trend = "closing" if late < early else "not closing"
    return (
        f"The {sparser} arm stays behind the {denser}: mean gap {early:+.3f} in the first half of the evaluations, "
        f"{late:+.3f} in the second ({trend}); at the end each of its routed experts has seen "
        f"{last['tokens_per_expert']:,.0f} tokens ({last['tokens_per_expert_param']:.1f} per expert parameter)."
    )


def overtakes(runs: list[Run]) -> list[dict[str, Any]]:
    """Each arm against the next denser one: where (step, tokens per routed expert) it overtakes it
    for good, with the sentence that says so."""
    experts = sorted(_arms(runs))
    out = []
    for denser, sparser in pairwise(experts):
        curve = gap_curve(runs, denser, sparser)
        point = overtake(curve) if len(curve) >= 3 else None
        out.append(
            {
                "denser": denser,
                "sparser": sparser,
                "step": None if point is None else point["step"],
                "tokens_per_expert": None if point is None else point["tokens_per_expert"],
                "tokens_per_expert_param": None if point is None else point["tokens_per_expert_param"],
                "final_gap": curve[-1]["gap"] if curve else None,
                "text": turning_point(curve, f"{denser}-expert", f"{sparser}-expert"),
            }
        )
    return out


def summarise(runs: list[Run]) -> tuple[list[dict[str, Any]], float]:
    """One row per run; the target is the densest arm's final validation loss (mean over its seeds),
    and each row's ``steps_to_target`` the (interpolated) steps that run needed to reach it."""
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
    densest = min((r["experts"] for r in rows), default=None)
    finals = [
        r["final_val_loss"] for r in rows if r["experts"] == densest and not math.isnan(r["final_val_loss"])
    ]
    target = sum(finals) / len(finals) if finals else math.nan
    for r in rows:
        r["steps_to_target"] = steps_to_reach(r.pop("val"), target)
    rows.sort(key=lambda r: (r["experts"], r["seed"] or 0))
    return rows, target


def _by_experts(rows: list[dict[str, Any]], key: str) -> dict[int, float]:
    return {e: v.mean for e, v in group(rows, "experts", key).items()}


def flop_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Steps (= FLOPs) to the densest arm's final loss, arm by arm: each sparser arm against the
    densest (how many fewer steps it needs) and the sparsest against each denser arm (K2's form:
    sparsity 48 against 8 / 16 / 32). A ratio is None where an arm never reached the target."""
    steps = group(rows, "experts", "steps_to_target")
    experts = sorted(steps)
    if len(experts) < 2:
        return []
    lo, hi = experts[0], experts[-1]
    # K2's three ratios sit next to the arms in the same place of the default sweep only
    k2 = K2_FLOP_RATIOS if tuple(experts) == SWEEP else {}
    reached = {e: s.n == len([r for r in rows if r["experts"] == e]) and s.n > 0 for e, s in steps.items()}

    def ratio(a: int, b: int) -> float | None:  # steps of a over steps of b
        if not (reached[a] and reached[b]) or steps[b].mean <= 0:
            return None
        return steps[a].mean / steps[b].mean

    return [
        {
            "experts": e,
            "steps": steps[e].mean if steps[e].n else None,
            "steps_lo": steps[e].lo if steps[e].n else None,
            "steps_hi": steps[e].hi if steps[e].n else None,
            "reached": reached[e],
            "densest_over_this": ratio(lo, e),  # > 1: this arm needs fewer steps than the densest
            "this_over_sparsest": ratio(e, hi),  # K2's form, the sparsest against this arm
            "k2": k2.get(e),
        }
        for e in experts
    ]


def findings(rows: list[dict[str, Any]], target: float, passes: list[dict[str, Any]]) -> list[str]:
    loss = group(rows, "experts", "final_val_loss")
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
        lo = experts[0]
        for e in experts[1:]:
            verdict = compare(loss[e], loss[lo])
            if verdict != "one seed":
                out.append(f"{e} vs {lo} experts: {e} is {describe(verdict)}.")
        ratios = flop_ratios(rows)
        parts = []
        for r in ratios[1:]:
            if not r["reached"]:
                parts.append(f"{r['experts']} experts: not reached in every seed's run")
                continue
            parts.append(
                f"{r['experts']} experts: {r['steps']:.0f} steps [{r['steps_lo']:.0f}, {r['steps_hi']:.0f}], "
                f"{r['densest_over_this']:.2f}x fewer than the {lo}-expert arm"
            )
        if parts:
            out.append(
                f"Steps (= FLOPs, active parameters being equal) to reach the {lo}-expert arm's final val loss "
                f"{target:.3f}: " + "; ".join(parts) + "."
            )
        k2_form = [
            f"{experts[-1]} vs {r['experts']}: {r['this_over_sparsest']:.2f}x"
            + (f" (K2: {r['k2']}x)" if r["k2"] is not None else "")
            for r in ratios[:-1]
            if r["this_over_sparsest"] is not None
        ]
        if k2_form:
            out.append(
                "In K2's form (the sparsest arm's FLOPs advantage over each denser arm, same target): "
                + "; ".join(k2_form)
                + ". K2 (sparsity 48 vs 8 / 16 / 32, target loss 1.5): 1.69x / 1.39x / 1.15x."
            )
    out += [p["text"] for p in passes if p["text"]]
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
    experts = sorted(_arms(runs))
    for denser, sparser in pairwise(experts):
        curve = gap_curve(runs, denser, sparser)
        if curve:
            xs3 = [c["tokens_per_expert"] for c in curve]
            ax3.plot(xs3, [c["gap"] for c in curve], marker=".", label=f"{sparser} - {denser}")
            ax3.fill_between(xs3, [c["gap_lo"] for c in curve], [c["gap_hi"] for c in curve], alpha=0.2)
    ax3.axhline(0, color="k", lw=0.8)
    if len(experts) >= 2:
        ax3.set_xscale("log")
        ax3.legend(fontsize=7)
    ax3.set(
        title="each arm minus the next denser (< 0: more experts win)",
        xlabel="tokens seen per routed expert of the sparser arm",
        ylabel="val loss difference",
    )
    ax1.legend(fontsize=7)
    save_figure(fig, path)


def _num(x: float | None, digits: int = 0, suffix: str = "") -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}{suffix}"


def write(runs: list[Run], folder: Path) -> Path:
    rows, target = summarise(runs)
    plot(runs, rows, folder / "sparsity_scaling.png")
    densest = rows[0]["experts"] if rows else "?"
    lines = [
        "# Sparsity scaling: loss vs total experts at fixed active parameters",
        "",
        "Same active experts, sizes, data, tokens and steps for every arm; only the routed expert count differs.",
        "",
        f"| experts | sparsity | seed | final val loss | final train loss | steps to the {densest}-expert arm's final loss |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['experts']} | {r['sparsity']:g} | {r['seed']} | {r['final_val_loss']:.3f} | "
            f"{r['final_train_loss']:.3f} | {_num(r['steps_to_target'])} |"
        )
    ratios = flop_ratios(rows)
    if ratios:
        lines += [
            "",
            f"Steps (= FLOPs) to val loss {target:.3f}, mean over seeds [min, max]:",
            "",
            f"| experts | steps | fewer than {densest} experts | sparsest's advantage over this arm | K2 |",
            "|---|---|---|---|---|",
        ]
        for r in ratios:
            steps = (
                f"{_num(r['steps'])} [{_num(r['steps_lo'])}, {_num(r['steps_hi'])}]"
                if r["reached"]
                else "not reached"
            )
            lines.append(
                f"| {r['experts']} | {steps} | {_num(r['densest_over_this'], 2, 'x')} | "
                f"{_num(r['this_over_sparsest'], 2, 'x')} | {_num(r['k2'], 2, 'x')} |"
            )
    passes = overtakes(runs)
    found = findings(rows, target, passes)
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
                "flop_ratios": ratios,
                "overtakes": passes,
                "gap_curve": gap_curve(runs),
                "findings": found,
            },
            indent=2,
        )
    )
    return out
