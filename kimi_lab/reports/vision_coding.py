"""Report of ``kimi-lab experiment vision_coding`` (K2.5: image-code pairs in joint pre-training).

The claim under test, from PAPER_NOTES: pre-training on image-code pairs (HTML, SVG next to
their renders) helps vision-based coding. Two models, pre-trained on the same pictures and
clips paired with code or with captions, then given the same SFT, answer the same held-out
screenshots and recordings; the report compares them prompt by prompt (paired differences)
and confirms or contradicts the claim only beyond two standard errors.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from kimi_lab.metrics import EVAL_SOURCE
from kimi_lab.reports.zero_vision import Diff, difference

ARMS = ("code", "caption")
SOURCES = ("screenshot", "recording")
LABELS = {
    "code": "image-code + recording-code pre-training",
    "caption": "the same pictures and clips with captions (control)",
}
FRAMES_SHOWN = 4  # of a recording, in the picture of examples


def _episodes(results: dict[str, Any], arm: str, source: str) -> list[dict[str, Any]]:
    return [e for e in results[arm].get("episodes", []) if source == "all" or e["source"] == source]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _se(values: list[float]) -> float:
    if len(values) < 2:
        return math.nan
    m = _mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1) / len(values))


def _num(x: float, digits: int = 3) -> str:
    """A table cell: ``-`` where there is nothing to average (no answer rendered, say)."""
    return f"{x:.{digits}f}" if math.isfinite(x) else "-"


def _pooled(results: dict[str, Any]) -> dict[str, Any]:
    """Every prompt as one source, ``all``, for the paired difference over both kinds of prompt."""
    return {
        arm: {
            "summary": {EVAL_SOURCE.format(source="all"): r["summary"].get("all", {})},
            "episodes": [{**e, "source": "all"} for e in r.get("episodes", [])],
        }
        for arm, r in results.items()
    }


def claim(overall: Diff) -> str:
    return {"higher": "confirmed", "lower": "contradicted"}.get(overall.verdict, "not judged")


def write(out: Path, results: dict[str, Any], meta: dict[str, Any]) -> Path:
    rows = []
    for arm in ARMS:
        row: dict[str, Any] = {"arm": arm, "label": LABELS[arm], "seconds": results[arm].get("seconds")}
        for source in (*SOURCES, "all"):
            eps = _episodes(results, arm, source)
            rewards = [float(e["reward"]) for e in eps]
            row[source] = {
                "n": len(eps),
                "reward": _mean(rewards),
                "se": _se(rewards),
                "render_rate": _mean([float(bool(e.get("rendered"))) for e in eps]),
                "visual": _mean([float(e.get("visual") or 0.0) for e in eps]),
                "structure": _mean([float(e["structure"]) for e in eps if e.get("structure") is not None]),
            }
        rows.append(row)
    diffs = {s: difference(results, "caption", "code", s) for s in SOURCES}
    diffs["all"] = difference(_pooled(results), "caption", "code", "all")
    status = claim(diffs["all"])
    findings = [
        f"{what}: code-pretrained {d.b:.3f} vs caption-pretrained {d.a:.3f}, difference {d.diff:+.3f} "
        f"+- {d.se:.3f} s.e. ({d.verdict} at two standard errors, n={d.n}, "
        f"{'paired over the same prompts' if d.paired else 'two independent samples'})"
        for what, d in (
            ("Screenshots -> HTML / SVG", diffs["screenshot"]),
            ("Recordings -> HTML", diffs["recording"]),
            ("All held-out prompts", diffs["all"]),
        )
    ]
    report = {
        "experiment": "vision_coding",
        "meta": meta,
        "rows": rows,
        "differences": {k: {**asdict(d), "diff": d.diff, "verdict": d.verdict} for k, d in diffs.items()},
        "claim": {"claim": "image-code pairs in pre-training help vision-based coding", "status": status},
        "findings": findings,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    examples = _examples_png(out, results)
    _bars_png(out / "vision_coding.png", rows)
    s = meta["scale"]
    lines = [
        "# vision_coding: image-code pairs in pre-training vs captions, then code from pixels",
        "",
        f"Scale `{s['model']}`: pre-training {s['pretrain_steps']} steps per arm (the same steps, batch and "
        f"vision share: the same tokens), SFT {s['sft_steps']} steps on code from pixels for both; evaluation "
        f"greedy, one answer per prompt, {s['eval_prompts']} held-out prompts per source; seed {meta['seed']}; "
        f"{meta['minutes']:.0f} minutes in all.",
        "",
        "| pre-training | screenshot reward | recording reward | all | renders (screenshot / recording) "
        "| visual / structure (all) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [f"{_num(r[x]['reward'])} +- {_num(r[x]['se'])}" for x in (*SOURCES, "all")]
        lines.append(
            f"| {r['label']} | {' | '.join(cells)} | {_num(r['screenshot']['render_rate'], 2)} / "
            f"{_num(r['recording']['render_rate'], 2)} | {_num(r['all']['visual'])} / "
            f"{_num(r['all']['structure'])} |"
        )
    lines += [
        "",
        "Reward: 0.75 x the visual similarity of the answer's render to the target, frame by frame at the "
        "target's times (1 - mean |answer - target| / mean |background - target|, at least 0), + 0.25 x "
        "the structure similarity (F1 of the elements by tag and of the visible words); 0 when the "
        "answer holds no complete document or does not render within the sandbox's limits ("
        "`kimi_lab/tasks/code_rewards.py`). Renders: the share of answers that rendered at all.",
        "",
        "## K2.5's claim at this scale",
        "",
        "| claim | status |",
        "|---|---|",
        f"| {report['claim']['claim']} | {status} |",
        "",
        "Confirmed or contradicted only where the paired difference over all held-out prompts is beyond "
        "two standard errors; the errors cover the prompts, not training runs (one seed).",
        "",
        "## What this run shows",
        "",
        *[f"- {f}" for f in findings],
    ]
    if examples:
        lines += ["", "## Rendered answers beside their targets", "", f"![examples]({examples.name})"]
        for arm in ARMS:
            for e in _episodes(results, arm, "all"):
                if "answer" in e:
                    lines += [
                        "",
                        f"{LABELS[arm]}, {e['source']} `{e['id']}` (reward {e['reward']:.3f}):",
                        "",
                        "```html",
                        e["answer"][:1500],
                        "```",
                    ]
    lines += ["", "![rewards](vision_coding.png)"]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return out / "report.md"


def _strip(folder: Path, task_id: str) -> Any:
    """A task's frames side by side (at most FRAMES_SHOWN, spread over the clip); None if none."""
    import numpy as np
    from PIL import Image

    frames = sorted(folder.glob(f"{task_id}_*.png"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    if not frames:
        return None
    step = max(1, -(-len(frames) // FRAMES_SHOWN))
    picked = frames[::step][: FRAMES_SHOWN - 1] + ([frames[-1]] if len(frames) > 1 else [])
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in dict.fromkeys(picked)]
    h = max(a.shape[0] for a in arrays)
    pad = [np.pad(a, ((0, h - a.shape[0]), (0, 4), (0, 0)), constant_values=128) for a in arrays]
    return np.concatenate(pad, axis=1)


def _examples_png(out: Path, results: dict[str, Any]) -> Path | None:
    """Targets beside each arm's rendered answers, for the prompts the evaluation kept."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ids = [e["id"] for e in results["code"].get("episodes", []) if "answer" in e]
    if not ids:
        return None
    rewards = {arm: {e["id"]: e["reward"] for e in results[arm].get("episodes", [])} for arm in ARMS}
    fig, axes = plt.subplots(len(ids), 3, figsize=(15, 2.6 * len(ids)), squeeze=False)
    for row, tid in zip(axes, ids):
        cells = [("target", out / "eval" / "targets", None)]
        cells += [(arm, out / "eval" / arm, rewards[arm].get(tid)) for arm in ARMS]
        for ax, (name, folder, reward) in zip(row, cells):
            strip = _strip(folder, tid)
            ax.axis("off")
            title = name if reward is None else f"{name}-pretrained: reward {reward:.2f}"
            ax.set_title(f"{tid}: {title}" if name == "target" else title, fontsize=8)
            if strip is None:
                ax.text(0.5, 0.5, "did not render", ha="center", va="center", fontsize=9)
            else:
                ax.imshow(strip)
    fig.tight_layout()
    path = out / "vision_coding_examples.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _bars_png(path: Path, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    x = range(len(SOURCES))
    for shift, r in zip((-0.2, 0.2), rows):
        ax.bar(
            [i + shift for i in x],
            [r[s]["reward"] for s in SOURCES],
            0.4,
            yerr=[2 * (r[s]["se"] if math.isfinite(r[s]["se"]) else 0) for s in SOURCES],
            capsize=3,
            label=f"{r['arm']}-pretrained (+- 2 s.e.)",
        )
    ax.set_xticks(list(x), [f"{s} -> code" for s in SOURCES])
    ax.set_ylabel("mean reward")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
