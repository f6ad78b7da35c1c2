"""Report of ``kimi-lab experiment zero_vision`` (K2.5 sections 5 and 6).

Claims under test, from PAPER_NOTES: text-only tool-use SFT transfers to image
inputs; adding visual trajectories does not help (it hurt in K2.5); joint RL
improves visual and text scores. The report states, in numbers, which of these
this run shows, and how sure one can be at this sample size.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

VARIANTS = ("pretrain", "sft_text", "sft_visual", "rl")
LABELS = {
    "pretrain": "pre-trained, no SFT",
    "sft_text": "text-only SFT (zero-vision)",
    "sft_visual": "SFT + visual traces",
    "rl": "text-only SFT + joint RL",
}


def _cell(results: dict[str, Any], variant: str, source: str, key: str) -> float:
    return float(results[variant]["summary"].get(f"source/{source}", {}).get(key, math.nan))


def _stderr(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 1e-9) / max(n, 1))


def _compare(results: dict[str, Any], a: str, b: str, source: str) -> str:
    """One sentence: does b beat a on this source, beyond the binomial noise of the sample?"""
    ra, rb = _cell(results, a, source, "reward"), _cell(results, b, source, "reward")
    n = int(results[a]["summary"].get(f"source/{source}", {}).get("n", 0))
    noise = 2 * math.sqrt(_stderr(min(max(ra, 0), 1), n) ** 2 + _stderr(min(max(rb, 0), 1), n) ** 2)
    diff = rb - ra
    verdict = "higher" if diff > noise else "lower" if diff < -noise else "not distinguishable from"
    return (
        f"{LABELS[b]} scores {rb:.3f} on {source} tasks vs {ra:.3f} for {LABELS[a]} "
        f"({diff:+.3f}; {verdict} at two standard errors, n={n})"
    )


def write(out: Path, results: dict[str, Any], meta: dict[str, Any]) -> Path:
    rows = []
    for v in VARIANTS:
        s = results[v]["summary"]
        rows.append(
            {
                "variant": v,
                "label": LABELS[v],
                "vision_reward": _cell(results, v, "vision", "reward"),
                "vision_accuracy": _cell(results, v, "vision", "accuracy"),
                "text_reward": _cell(results, v, "text", "reward"),
                "text_accuracy": _cell(results, v, "text", "accuracy"),
                "tool_calls_per_episode": s.get("tool_calls_per_episode", math.nan),
                "tool_error_rate": s.get("tool_error_rate", math.nan),
                "response_tokens": s.get("response_tokens", math.nan),
                "families": {
                    k.removeprefix("family/"): val["reward"]
                    for k, val in s.items()
                    if k.startswith("family/")
                },
            }
        )
    findings = [
        "Transfer (K2.5: text-only SFT teaches visual tool use): "
        + _compare(results, "pretrain", "sft_text", "vision"),
        "Visual traces (K2.5: they hurt): " + _compare(results, "sft_text", "sft_visual", "vision"),
        "Joint RL, vision: " + _compare(results, "sft_text", "rl", "vision"),
        "Joint RL, text: " + _compare(results, "sft_text", "rl", "text"),
    ]
    (out / "report.json").write_text(json.dumps({"meta": meta, "rows": rows, "findings": findings}, indent=2))
    lines = [
        "# zero_vision: text-only tool-use SFT, visual traces, joint RL",
        "",
        f"Scale `{meta['scale']['model']}`: pre-train {meta['scale']['pretrain_steps']} steps, "
        f"SFT {meta['scale']['sft_steps']} steps, RL {meta['scale']['rl_steps']} steps; "
        f"evaluation: greedy, one sample per prompt, {meta['scale']['eval_prompts']} prompts per source; "
        f"seed {meta['seed']}; {meta['minutes']:.0f} minutes in all.",
        "",
        "| model | vision reward | vision acc. | text reward | text acc. | tool calls / ep. | tool errors | tokens / ep. |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['vision_reward']:.3f} | {r['vision_accuracy']:.2f} | {r['text_reward']:.3f} "
            f"| {r['text_accuracy']:.2f} | {r['tool_calls_per_episode']:.2f} | {r['tool_error_rate']:.2f} "
            f"| {r['response_tokens']:.0f} |"
        )
    families = sorted({f for r in rows for f in r["families"]})
    lines += ["", "Reward per task family:", "", "| model | " + " | ".join(families) + " |"]
    lines.append("|---|" + "---|" * len(families))
    for r in rows:
        lines.append(
            f"| {r['label']} | "
            + " | ".join(f"{r['families'].get(f, math.nan):.2f}" for f in families)
            + " |"
        )
    lines += ["", "## What this run shows", ""] + [f"- {f}" for f in findings]
    example = next((e for e in results["sft_text"].get("examples", []) if e["source"] == "vision"), None)
    if example:
        lines += ["", "## One visual episode of the text-only SFT model", "", "```"]
        for m in example["transcript"]:
            body = m.get("content", "")
            for c in m.get("tool_calls", []):
                body += f"\n[tool call {c['name']}]\n{c['input']}"
            lines.append(f"{m['role']}: {body[:800]}")
        lines += ["```", f"reward {example['reward']:.2f} (answer {example['answer']})"]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    _plot(out / "zero_vision.png", rows)
    return out / "report.md"


def _plot(path: Path, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["vision_reward"] for r in rows], 0.4, label="vision tasks")
    ax.bar([i + 0.2 for i in x], [r["text_reward"] for r in rows], 0.4, label="text tasks")
    ax.set_xticks(list(x), [r["label"] for r in rows], fontsize=7)
    ax.set_ylabel("mean reward")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
