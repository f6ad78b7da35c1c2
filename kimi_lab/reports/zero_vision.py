"""Report of ``kimi-lab experiment zero_vision`` (K2.5 sections 5 and 6).

Claims under test, from PAPER_NOTES: text-only tool-use SFT transfers to image
inputs; adding visual trajectories does not help (it hurt in K2.5); joint RL
improves visual and text scores. The report states, in numbers, which of these
this run shows, and how sure one can be at this sample size.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kimi_lab.errors import KimiLabError
from kimi_lab.metrics import EVAL_FAMILY, EVAL_SOURCE

VARIANTS = ("pretrain", "sft_text", "sft_visual", "rl")
BLANK = "sft_text_blank"  # the control: text-only SFT on the visual prompts with the images blanked
LABELS = {
    "pretrain": "pre-trained, no SFT",
    "sft_text": "text-only SFT (zero-vision)",
    "sft_visual": "SFT + visual traces",
    "rl": "text-only SFT + joint RL",
    BLANK: "text-only SFT, images blanked",
}


def _group(results: dict[str, Any], variant: str, source: str) -> dict[str, Any]:
    """One model's summary on one source; an evaluation without it (a renamed key, a source never
    evaluated) is an error here, not a NaN further on."""
    summary = results[variant]["summary"]
    key = EVAL_SOURCE.format(source=source)
    if key not in summary:
        held = ", ".join(k for k in summary if isinstance(summary[k], dict)) or "none"
        raise KimiLabError(f"the evaluation of {variant} has no {key!r} (its groups: {held})")
    return summary[key]


def _cell(results: dict[str, Any], variant: str, source: str, key: str) -> float:
    return float(_group(results, variant, source)[key])


@dataclass(frozen=True)
class Diff:
    """Model b minus model a on one source's prompts, with the standard error of the difference."""

    a: float
    b: float
    n: int
    se: float
    paired: bool  # per-prompt differences (same prompts for both); else two independent samples

    @property
    def diff(self) -> float:
        return self.b - self.a

    @property
    def verdict(self) -> str:
        if self.n < 2 or math.isnan(self.diff):
            return "not judged"
        if self.diff > 2 * self.se:
            return "higher"
        if self.diff < -2 * self.se:
            return "lower"
        return "not distinguishable"


def _rewards(results: dict[str, Any], variant: str, source: str) -> dict[str, float]:
    """Per-prompt rewards by task id (evaluations saved before per-prompt records: empty)."""
    return {
        e["id"]: float(e["reward"]) for e in results[variant].get("episodes", []) if e["source"] == source
    }


def _se(results: dict[str, Any], variant: str, source: str) -> float:
    """Standard error of one model's mean reward on one source (per-prompt rewards when saved)."""
    rs = list(_rewards(results, variant, source).values())
    if len(rs) >= 2:
        mean = sum(rs) / len(rs)
        return math.sqrt(sum((r - mean) ** 2 for r in rs) / (len(rs) - 1) / len(rs))
    n = int(_group(results, variant, source)["n"])
    return _binomial_se(_cell(results, variant, source, "reward"), n)


def _binomial_se(p: float, n: int) -> float:
    # rewards lie in [0, 1], so p (1 - p) bounds their variance
    p = min(max(p, 0.0), 1.0)
    return math.sqrt(max(p * (1 - p), 1e-9) / max(n, 1))


def difference(results: dict[str, Any], a: str, b: str, source: str) -> Diff:
    """b - a on ``source``: paired over the prompts both models answered (every model sees the
    same first-n val prompts), which removes the prompts' own spread of difficulty from the noise."""
    ra, rb = _rewards(results, a, source), _rewards(results, b, source)
    common = sorted(set(ra) & set(rb))
    if len(common) >= 2:
        d = [rb[i] - ra[i] for i in common]
        n = len(d)
        mean = sum(d) / n
        var = sum((x - mean) ** 2 for x in d) / (n - 1)
        ma = sum(ra[i] for i in common) / n
        return Diff(ma, ma + mean, n, math.sqrt(var / n), True)
    va, vb = _cell(results, a, source, "reward"), _cell(results, b, source, "reward")
    n = int(_group(results, a, source)["n"])
    return Diff(va, vb, n, math.sqrt(_binomial_se(va, n) ** 2 + _binomial_se(vb, n) ** 2), False)


def _compare(results: dict[str, Any], a: str, b: str, source: str) -> tuple[str, Diff]:
    """One sentence: does b beat a on this source, beyond two standard errors?"""
    d = difference(results, a, b, source)
    verdict = {
        "higher": "higher",
        "lower": "lower",
        "not distinguishable": "not distinguishable from",
        "not judged": "not judged against",
    }[d.verdict]
    how = "paired over the same prompts" if d.paired else "two independent samples"
    return (
        f"{LABELS[b]} scores {d.b:.3f} on {source} tasks vs {d.a:.3f} for {LABELS[a]} "
        f"({d.diff:+.3f} +- {d.se:.3f} s.e.; {verdict} at two standard errors, n={d.n}, {how})"
    ), d


def claims(diffs: dict[str, Diff]) -> list[dict[str, str]]:
    """K2.5's three claims, each confirmed, contradicted or not judged (within two standard errors)."""

    def status(d: Diff, want: str) -> str:
        if d.verdict in ("not distinguishable", "not judged"):
            return "not judged"
        return "confirmed" if d.verdict == want else "contradicted"

    transfer = status(diffs["transfer"], "higher")
    if "transfer_control" in diffs:  # beating the pre-trained model could be the answer format alone
        control = status(diffs["transfer_control"], "higher")
        if "contradicted" in (transfer, control):
            transfer = "contradicted"
        elif transfer == "confirmed" and control != "confirmed":
            transfer = "partly confirmed (the format transfers; reading the image is not shown)"
        elif transfer != "confirmed" or control != "confirmed":
            transfer = "not judged"
    traces = status(diffs["traces"], "lower")
    rl_v, rl_t = status(diffs["rl_vision"], "higher"), status(diffs["rl_text"], "higher")
    if "contradicted" in (rl_v, rl_t):
        rl = "contradicted"
    elif rl_v == rl_t == "confirmed":
        rl = "confirmed"
    elif "confirmed" in (rl_v, rl_t):
        rl = "partly confirmed"
    else:
        rl = "not judged"
    return [
        {
            "claim": "text-only SFT transfers to vision",
            "status": transfer,
            "decided_by": [k for k in ("transfer", "transfer_control") if k in diffs],
        },
        {"claim": "visual traces hurt", "status": traces, "decided_by": ["traces"]},
        {
            "claim": f"joint RL helps both (vision: {rl_v}, text: {rl_t})",
            "status": rl,
            "decided_by": ["rl_vision", "rl_text"],
        },
    ]


# the sign each claim expects of its differences (b - a): transfer and RL raise rewards, traces lower them
CLAIMED = {"transfer": 1, "transfer_control": 1, "traces": -1, "rl_vision": 1, "rl_text": 1}
# the training stage whose length sets each difference (text-only SFT, the visual-trace SFT, RL)
STAGE_STEPS = {
    "transfer": "sft_steps",
    "transfer_control": "sft_steps",
    "traces": "sft_steps",
    "rl_vision": "rl_steps",
    "rl_text": "rl_steps",
}


def budget(d: Diff, steps: int | None = None) -> dict[str, Any]:
    """What a difference within two standard errors would need to be judged, from its own numbers.

    The variance of the per-prompt differences is n x se^2; the measured difference clears two
    standard errors once n > 4 var / diff^2 prompts. With the prompts fixed, and if the difference
    grew in proportion to training steps (a first-order guess, stated as such), it would clear them
    after steps x 2 se / |diff| steps. A difference of exactly 0 with no variance (both models score
    alike on every prompt) cannot be judged by any number of prompts."""
    var = d.se**2 * d.n
    diff = abs(d.diff)
    out: dict[str, Any] = {
        "diff": d.diff,
        "se": d.se,
        "n": d.n,
        "detectable": 2 * d.se,  # the smallest difference this many prompts can judge
        "prompts": None,
        "steps": None,
    }
    if diff > 0 and not math.isnan(diff):
        out["prompts"] = math.floor(4 * var / diff**2) + 1
        if steps:
            out["steps"] = math.ceil(steps * 2 * d.se / diff)
    return out


def budget_sentence(key: str, b: dict[str, Any], stage: str) -> str:
    lead = f"{key}: {b['diff']:+.3f} +- {b['se']:.3f} (n={b['n']}; at this n only a difference beyond {b['detectable']:.3f} is judged)"
    if b["prompts"] is None:
        return lead + "; no measured difference, so more prompts cannot judge it: the training budget limits."
    side = "the claim's direction" if b["diff"] * CLAIMED.get(key, 1) > 0 else "against the claim"
    text = (
        f"{lead}; the measured difference ({side}) would clear two standard errors at {b['prompts']:,} "
        "prompts per source"
    )
    if b["steps"] is not None:
        text += f", or at {b['n']} prompts after about {b['steps']:,} {stage} steps if it grew in proportion to them"
    return text + "."


def write(out: Path, results: dict[str, Any], meta: dict[str, Any]) -> Path:
    rows, family = [], EVAL_FAMILY.format(family="")
    for v in VARIANTS:
        s = results[v]["summary"]
        rows.append(
            {
                "variant": v,
                "label": LABELS[v],
                "vision_reward": _cell(results, v, "vision", "reward"),
                "vision_se": _se(results, v, "vision"),
                "vision_accuracy": _cell(results, v, "vision", "accuracy"),
                "text_reward": _cell(results, v, "text", "reward"),
                "text_se": _se(results, v, "text"),
                "text_accuracy": _cell(results, v, "text", "accuracy"),
                "tool_calls_per_episode": s["tool_calls_per_episode"],
                "tool_error_rate": s["tool_error_rate"],
                "response_tokens": s["response_tokens"],
                "families": {
                    k.removeprefix(family): val["reward"] for k, val in s.items() if k.startswith(family)
                },
            }
        )
    compared = {
        "transfer": (
            "Transfer (K2.5: text-only SFT teaches visual tool use): ",
            "pretrain",
            "sft_text",
            "vision",
        ),
        "traces": ("Visual traces (K2.5: they hurt): ", "sft_text", "sft_visual", "vision"),
        "rl_vision": ("Joint RL, vision: ", "sft_text", "rl", "vision"),
        "rl_text": ("Joint RL, text: ", "sft_text", "rl", "text"),
    }
    if BLANK in results:
        compared["transfer_control"] = (
            "Transfer, against the same model with every image blanked (does its code read the pixels?): ",
            BLANK,
            "sft_text",
            "vision",
        )
    findings, diffs = [], {}
    for key, (lead, a, b, source) in compared.items():
        sentence, diffs[key] = _compare(results, a, b, source)
        findings.append(lead + sentence)
    verdicts = claims(diffs)
    budgets = {k: budget(d, meta.get("scale", {}).get(STAGE_STEPS[k])) for k, d in diffs.items()}
    (out / "report.json").write_text(
        json.dumps(
            {
                "meta": meta,
                "rows": rows,
                "findings": findings,
                "claims": verdicts,
                "differences": {
                    k: {**asdict(d), "diff": d.diff, "verdict": d.verdict, "budget": budgets[k]}
                    for k, d in diffs.items()
                },
            },
            indent=2,
        )
    )
    lines = [
        "# zero_vision: text-only tool-use SFT, visual traces, joint RL",
        "",
        f"Scale `{meta['scale']['model']}`: pre-train {meta['scale']['pretrain_steps']} steps, "
        f"SFT {meta['scale']['sft_steps']} steps, RL {meta['scale']['rl_steps']} steps; "
        f"evaluation: greedy, one sample per prompt, {meta['scale']['eval_prompts']} prompts per source; "
        f"seed {meta['seed']}; {meta['minutes']:.0f} minutes in all.",
        "",
    ]
    if meta.get("stages"):
        lines += [
            "Stages (wall minutes: start, duration; side by side after pre-training): "
            + ", ".join(f"{k} {v[0]:.1f} + {v[1]:.1f}" for k, v in meta["stages"].items())
            + ".",
            "",
        ]
    lines += [
        "| model | vision reward | vision acc. | text reward | text acc. | tool calls / ep. | tool errors | tokens / ep. |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['vision_reward']:.3f} | {r['vision_accuracy']:.2f} | {r['text_reward']:.3f} "
            f"| {r['text_accuracy']:.2f} | {r['tool_calls_per_episode']:.2f} | {r['tool_error_rate']:.2f} "
            f"| {r['response_tokens']:.0f} |"
        )
    if BLANK in results:
        lines += [
            "",
            f"Control: {LABELS[BLANK]}: vision reward {_cell(results, BLANK, 'vision', 'reward'):.3f} "
            f"(accuracy {_cell(results, BLANK, 'vision', 'accuracy'):.2f}, tool calls / ep. "
            f"{results[BLANK]['summary'].get('tool_calls_per_episode', math.nan):.2f}): what the answer "
            "format and the prompt alone score, with nothing to see.",
        ]
    lines += [
        "",
        "Standard errors of the mean rewards (vision / text): "
        + "; ".join(f"{r['label']} {r['vision_se']:.3f} / {r['text_se']:.3f}" for r in rows)
        + ". Evaluation time per model: "
        + ", ".join(f"{v} {results[v]['seconds'] / 60:.1f} min" for v in results if "seconds" in results[v])
        + ".",
    ]
    families = sorted({f for r in rows for f in r["families"]})
    lines += ["", "Reward per task family:", "", "| model | " + " | ".join(families) + " |"]
    lines.append("|---|" + "---|" * len(families))
    for r in rows:
        lines.append(
            f"| {r['label']} | "
            + " | ".join(f"{r['families'].get(f, math.nan):.2f}" for f in families)
            + " |"
        )
    lines += [
        "",
        "## K2.5's claims at this scale",
        "",
        "| claim | status | deciding differences (+- s.e.) |",
        "|---|---|---|",
    ]
    lines += [
        f"| {c['claim']} | {c['status']} | "
        + "; ".join(f"{k} {diffs[k].diff:+.3f} +- {diffs[k].se:.3f}" for k in c["decided_by"])
        + " |"
        for c in verdicts
    ]
    needs = [
        budget_sentence(k, budgets[k], STAGE_STEPS[k].removesuffix("_steps"))
        for c in verdicts
        if c["status"] != "confirmed" and c["status"] != "contradicted"
        for k in c["decided_by"]
        if diffs[k].verdict in ("not distinguishable", "not judged")
    ]
    pools = ", ".join(f"{k} {v}" for k, v in (meta.get("held_out") or {}).items()) or "unknown"
    if needs:
        lines += [
            "",
            "What the differences within two standard errors would need, from their own paired variances "
            f"(held-out prompts available: {pools}; more need a larger task set, "
            "kimi-lab data build visual-tasks --n N):",
            "",
        ] + [f"- {n}" for n in needs]
    lines += [
        "",
        "A claim is confirmed or contradicted only where the difference is beyond two standard errors "
        "of the per-prompt differences (the same held-out prompts for every model); the errors cover "
        f"the prompts, not the training runs (one seed, {meta['seed']}).",
    ]
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
    for shift, src in ((-0.2, "vision"), (0.2, "text")):
        ax.bar(
            [i + shift for i in x],
            [r[f"{src}_reward"] for r in rows],
            0.4,
            yerr=[2 * r[f"{src}_se"] for r in rows],
            capsize=3,
            label=f"{src} tasks (+- 2 s.e.)",
        )
    ax.set_xticks(list(x), [r["label"] for r in rows], fontsize=7)
    ax.set_ylabel("mean reward")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
