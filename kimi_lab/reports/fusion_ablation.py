"""Report of ``experiment=fusion_ablation``: when should vision join pre-training (K2.5)?

K2.5's claims, from PAPER_NOTES: at the same total vision (10%) and text budgets,
early fusion (vision from the start, 10:90) is at least as good as mid (from 50%,
20:80) and late (from 80%, 50:50) on vision and text; mid and late show a
"dip-and-recover" in text quality when vision arrives, early stays smooth. Here
"quality" is validation loss per source (lower is better), evaluated every
``trainer.val_check_interval`` steps.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from kimi_lab.metrics import DATA_VISION_RATIO, VAL_SOURCE_LOSS
from kimi_lab.reports.runs import Run, save_figure
from kimi_lab.reports.seeds import compare, group, seeds_note

ARMS = {0.0: "early", 0.5: "mid", 0.8: "late"}
K2_5 = {  # vision knowledge, vision reasoning, OCR, text knowledge, text reasoning, code (higher is better)
    "early": (25.8, 43.8, 65.7, 45.5, 58.5, 24.8),
    "mid": (25.0, 40.7, 64.1, 43.9, 58.6, 24.0),
    "late": (24.2, 39.0, 61.5, 43.1, 57.8, 24.0),
}
VISION_SOURCES = ("image_code", "video", "interleaved")


def _arm(run: Run) -> str:
    start = float(run.get("data.fusion.vision_start") or 0.0)
    return ARMS.get(round(start, 2), f"start {start:g}")


def text_dip(run: Run) -> dict[str, float]:
    """Text val loss just before vision arrives, its peak in the following 20% of training, and at the end."""
    text = run.series(VAL_SOURCE_LOSS.format(source="text"))
    steps = int(run.get("trainer.max_steps"))
    start = float(run.get("data.fusion.vision_start") or 0.0) * steps
    nan = {"before": math.nan, "peak_after": math.nan, "dip": math.nan, "final": math.nan}
    if text.empty or start <= 0:
        return {**nan, "final": float(text.iloc[-1]) if len(text) else math.nan}
    before = text[text.index < start]
    after = text[(text.index >= start) & (text.index <= start + 0.2 * steps)]
    if before.empty or after.empty:
        return {**nan, "final": float(text.iloc[-1])}
    b, p = float(before.iloc[-1]), float(after.max())
    return {"before": b, "peak_after": p, "dip": p - b, "final": float(text.iloc[-1])}


def summarise(runs: list[Run]) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        vision = [run.final(VAL_SOURCE_LOSS.format(source=s), last=2) for s in VISION_SOURCES]
        vision = [v for v in vision if not math.isnan(v)]
        ratio = run.series(DATA_VISION_RATIO)
        rows.append(
            {
                "arm": _arm(run),
                "job": run.path.name,
                "seed": run.get("seed"),
                "vision_start": float(run.get("data.fusion.vision_start") or 0.0),
                "vision_ratio": run.get("data.fusion.vision_ratio"),
                "measured_vision_share": float(ratio.mean()) if len(ratio) else math.nan,
                "final_text_val_loss": run.final(VAL_SOURCE_LOSS.format(source="text"), last=2),
                "final_vision_val_loss": sum(vision) / len(vision) if vision else math.nan,
                **{f"text_{k}": v for k, v in text_dip(run).items()},
            }
        )
    order = list(ARMS.values())
    rows.sort(key=lambda r: (order.index(r["arm"]) if r["arm"] in order else 9, r["seed"] or 0))
    return rows


def findings(rows: list[dict[str, Any]]) -> list[str]:
    arms = [a for a in ("early", "mid", "late") if any(r["arm"] == a for r in rows)]
    out = []
    share = group(rows, "arm", "measured_vision_share")
    if any(share[a].n for a in arms):
        out.append(
            "Measured vision share of input tokens per arm: "
            + ", ".join(f"{a} {share[a].fmt()}" for a in arms)
            + " (the budgets are equal when these agree)."
        )
    words = {
        "lower": "lower than",
        "higher": "higher than",
        "within spread": "within the seed spread of",
        "one seed": "(one seed) vs",
    }
    for key, label in (("final_vision_val_loss", "vision"), ("final_text_val_loss", "text")):
        vals = group(rows, "arm", key)
        if len(arms) == 3 and all(vals[a].n for a in arms):
            order = sorted(arms, key=lambda a: vals[a].mean)
            k2 = "matches" if order == ["early", "mid", "late"] else "differs from"
            pairs = [
                f"{a} {words[compare(vals[a], vals[b])]} {b}"
                for a, b in (("early", "mid"), ("mid", "late"), ("early", "late"))
            ]
            out.append(
                f"Final {label} val loss: "
                + ", ".join(f"{a} {vals[a].fmt()}" for a in arms)
                + f"; by the mean, best to worst {' > '.join(order)}, which {k2} K2.5's early >= mid >= late. "
                + "Pairwise: "
                + "; ".join(pairs)
                + "."
            )
    dip = group(rows, "arm", "text_dip")
    for a in ("mid", "late"):
        runs = [r for r in rows if r["arm"] == a and not math.isnan(r["text_dip"])]
        if not runs:
            continue
        recovered = sum(r["text_final"] < r["text_peak_after"] for r in runs if r["text_dip"] > 0)
        dipped = sum(r["text_dip"] > 0 for r in runs)
        before = group(runs, "arm", "text_before")[a]
        peak = group(runs, "arm", "text_peak_after")[a]
        final = group(runs, "arm", "text_final")[a]
        out.append(
            f"{a}: text val loss {before.fmt()} just before vision arrives, peak {peak.fmt()} in the next 20% of "
            f"training (dip {dip[a].fmt()}), {final.fmt()} at the end; {dipped} of {len(runs)} seeds dip, "
            f"{recovered} of those recover (K2.5: dip-and-recover)."
        )
    out.append(seeds_note(rows))
    return out


def plot(runs: list[Run], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    colors = {"early": "tab:blue", "mid": "tab:orange", "late": "tab:green"}
    seeds = sorted({run.get("seed") or 0 for run in runs})
    for run in runs:
        arm = _arm(run)
        color = colors.get(arm, "tab:gray")
        style = ("-", "--", "-.", ":")[seeds.index(run.get("seed") or 0) % 4]  # one line style per seed
        label = f"{arm} (seed {run.get('seed')})"
        text = run.series(VAL_SOURCE_LOSS.format(source="text"))
        ax1.plot(text.index, text.values, color=color, linestyle=style, label=label)
        start = float(run.get("data.fusion.vision_start") or 0.0) * int(run.get("trainer.max_steps"))
        if start > 0:
            ax1.axvline(start, color=color, linestyle=":", linewidth=1)
        ratio = run.series(DATA_VISION_RATIO)
        ax2.plot(
            ratio.index,
            ratio.rolling(5, min_periods=1).mean().values,
            color=color,
            linestyle=style,
            label=label,
        )
    ax1.set(title="text val loss (dotted: vision arrives)", xlabel="step", ylabel="loss")
    ax2.set(title="vision share of input tokens", xlabel="step")
    save_figure(fig, path, legends=(ax1, ax2))


def write(runs: list[Run], folder: Path) -> Path:
    rows = summarise(runs)
    plot(runs, folder / "fusion_ablation.png")
    found = findings(rows)
    lines = [
        "# Fusion ablation: early, mid or late vision at equal budgets",
        "",
        "| arm | seed | vision starts | ratio | vision share (measured) | final text val loss | final vision val loss | text dip |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['arm']} | {r['seed']} | {r['vision_start']:.0%} | {r['vision_ratio']} | {r['measured_vision_share']:.3f} | "
            f"{r['final_text_val_loss']:.3f} | {r['final_vision_val_loss']:.3f} | {'—' if math.isnan(r['text_dip']) else format(r['text_dip'], '+.3f')} |"
        )
    lines += ["", "![text loss and vision share](fusion_ablation.png)", "", "## What this run shows", ""]
    lines += [f"- {f}" for f in found]
    lines += [
        "",
        "## K2.5's table (benchmark scores, higher is better)",
        "",
        "| arm | vision starts | ratio | vis. knowl. | vis. reas. | OCR | text knowl. | text reas. | code |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for arm, start, ratio in (("early", "0%", "10:90"), ("mid", "50%", "20:80"), ("late", "80%", "50:50")):
        lines.append(f"| {arm} | {start} | {ratio} | " + " | ".join(f"{v:g}" for v in K2_5[arm]) + " |")
    lines += [
        "",
        "Mid and late fusion show dip-and-recover in text quality when vision arrives; early stays smooth.",
    ]
    out = folder / "report.md"
    out.write_text("\n".join(lines) + "\n")
    clean = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows]
    (folder / "report.json").write_text(
        json.dumps({"experiment": "fusion_ablation", "arms": clean, "findings": found}, indent=2)
    )
    return out
