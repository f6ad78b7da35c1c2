"""Report of ``experiment=heads_vs_layers``: attention heads against loss and long-context FLOPs (K2).

K2's claim, from PAPER_NOTES: with 61 layers, 64 heads instead of 128 cost only
0.5-1.2% in validation loss, while 128 heads would add 83% inference FLOPs at 128k
context. Here the arms differ only in heads (head dims fixed); the report puts the
measured loss difference next to the per-token forward FLOPs at long context, from
``forward_flops_per_token`` (multiply-adds x 2, attention over ``context`` keys).

Sweeps that differ in more than heads and seed (a longer run, wider heads: the
follow-up pair the README names, joined with ``kimi-lab report DIR --also DIR2``) are
compared setting by setting, and for each the report follows the loss gap between
the arms over training: whether it is closing says whether a longer run could flip it.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

from kimi_lab.config.schema import ModelConfig
from kimi_lab.metrics import VAL_LOSS
from kimi_lab.reports.runs import Run, plot_series
from kimi_lab.reports.seeds import compare, describe, group, seeds_note

CONTEXTS = (4096, 131072)


def forward_flops_per_token(cfg: ModelConfig, context: int) -> float:
    """FLOPs to produce one token's logits with ``context`` tokens of KV cache (MLA, MoE active experts)."""
    h, a = cfg.hidden_size, cfg.attention
    H, qk, v = a.n_heads, a.qk_nope_head_dim + a.qk_rope_head_dim, a.v_head_dim
    q = h * a.q_lora_rank + a.q_lora_rank * H * qk if a.q_lora_rank else h * H * qk
    kv = h * (a.kv_lora_rank + a.qk_rope_head_dim) + a.kv_lora_rank * H * (a.qk_nope_head_dim + v)
    attn_layer = q + kv + H * v * h + H * context * (qk + v)
    m = cfg.moe
    moe_layer = (m.top_k + m.n_shared_experts) * 3 * h * m.expert_ffn_dim + h * m.n_routed_experts
    dense_layer = 3 * h * cfg.dense_ffn_dim
    n_dense = cfg.first_k_dense
    macs = cfg.n_layers * attn_layer + n_dense * dense_layer + (cfg.n_layers - n_dense) * moe_layer
    macs += h * cfg.vocab_size  # LM head
    return 2.0 * macs


def _model(run: Run) -> ModelConfig:
    """The run's model config: its preset with the sizes this experiment's sweeps change."""
    from kimi_lab.config import compose, to_run_config

    model = to_run_config(compose([f"model={run.get('model.name')}"])).model
    a = model.attention
    attention = replace(
        a,
        n_heads=int(run.get("model.attention.n_heads")),
        **{
            k: int(run.get(f"model.attention.{k}") or getattr(a, k))
            for k in ("qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")
        },
    )
    return replace(
        model,
        n_layers=int(run.get("model.n_layers") or model.n_layers),
        hidden_size=int(run.get("model.hidden_size") or model.hidden_size),
        attention=attention,
    )


def setting(run: Run) -> str:
    """What a comparison holds fixed besides heads and seed (steps, tokens, width, head dims), as a label:
    runs that differ in any of these are compared only within their own setting."""
    a = run.get("model.attention") or {}
    return (
        f"{run.get('trainer.max_steps')} steps of {run.get('data.batch_size')}x{run.get('data.seq_len')} tokens, "
        f"width {run.get('model.hidden_size')}, head dims {a.get('qk_nope_head_dim')}+{a.get('qk_rope_head_dim')}"
        f"/{a.get('v_head_dim')}"
    )


def summarise(runs: list[Run]) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        model = _model(run)
        rows.append(
            {
                "job": run.path.name,
                "seed": run.get("seed"),
                "setting": setting(run),
                "steps": run.get("trainer.max_steps"),
                "layers": model.n_layers,
                "heads": model.attention.n_heads,
                "final_val_loss": run.final(VAL_LOSS, last=2),
                **{f"gflops_per_token_{c}": forward_flops_per_token(model, c) / 1e9 for c in CONTEXTS},
            }
        )
    rows.sort(key=lambda r: (r["steps"] or 0, r["setting"], r["heads"], r["seed"] or 0))
    return rows


def gap_over_training(runs: list[Run], lo: int, hi: int) -> list[dict[str, float]]:
    """(hi heads - lo heads) validation loss at each evaluation both have, over the seeds both ran."""
    by: dict[int, dict[Any, Run]] = {}
    for run in runs:
        by.setdefault(int(run.get("model.attention.n_heads")), {})[run.get("seed")] = run
    gaps: dict[float, list[float]] = {}
    for seed in set(by.get(lo, {})) & set(by.get(hi, {})):
        a, b = by[lo][seed].series(VAL_LOSS), by[hi][seed].series(VAL_LOSS)
        for step in sorted(set(a.index) & set(b.index)):
            gaps.setdefault(float(step), []).append(float(b[step]) - float(a[step]))
    return [
        {"step": st, "gap": sum(g) / len(g), "gap_lo": min(g), "gap_hi": max(g)}
        for st, g in sorted(gaps.items())
    ]


def gap_trend(curve: list[dict[str, float]]) -> str:
    """One sentence: how the gap moved from the first half of training to the second."""
    late = [c for c in curve if c["step"] >= curve[-1]["step"] / 2] if curve else []
    early = [c for c in curve if c not in late and c["step"] > 0]
    if len(early) < 1 or len(late) < 2:
        return ""
    e = sum(c["gap"] for c in early) / len(early)
    l_ = sum(c["gap"] for c in late) / len(late)
    last = curve[-1]
    moving = "narrowing" if abs(l_) < abs(e) else "widening"
    return (
        f"the more-heads arm's loss minus the fewer-heads arm's is {e:+.3f} on average in the first half of "
        f"training and {l_:+.3f} in the second ({moving}), {last['gap']:+.3f} [{last['gap_lo']:+.3f}, "
        f"{last['gap_hi']:+.3f}] at the last evaluation"
    )


def k2_flops_increase(context: int = 131072) -> float:
    """K2's shape, 64 -> 128 heads: the extra forward FLOPs per token at ``context`` (the +83% claim)."""
    from kimi_lab.config import compose, to_run_config

    k2 = to_run_config(compose(["model=k2"])).model
    more = replace(k2, attention=replace(k2.attention, n_heads=2 * k2.attention.n_heads))
    return forward_flops_per_token(more, context) / forward_flops_per_token(k2, context) - 1


def findings(rows: list[dict[str, Any]], runs: list[Run] | None = None) -> list[str]:
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    out: list[str] = []
    for name in settings:
        these = [r for r in rows if r["setting"] == name]
        by: dict[int, list[dict[str, Any]]] = {}
        for r in these:
            by.setdefault(r["heads"], []).append(r)
        if len(by) < 2:
            out.append(f"{name}: only one head count ran, nothing to compare.")
            continue
        lo, hi = min(by), max(by)
        loss = group(these, "heads", "final_val_loss")
        rel = (loss[lo].mean - loss[hi].mean) / loss[lo].mean * 100
        verdict = describe(compare(loss[hi], loss[lo]))
        where = f" ({name})" if len(settings) > 1 else ""
        out.append(
            f"{hi} heads vs {lo} heads ({by[lo][0]['layers']} layers{where}): final val loss {loss[hi].fmt()} vs "
            f"{loss[lo].fmt()}, {abs(rel):.1f}% {'lower' if rel >= 0 else 'higher'} with more heads, {verdict} "
            "(K2: 0.5-1.2% lower with 128 vs 64 heads)."
        )
        job_runs = [r_ for r_ in runs or [] if setting(r_) == name]
        trend = gap_trend(gap_over_training(job_runs, lo, hi))
        if trend:
            out.append(f"Over training{where}: {trend}.")
    first = [r for r in rows if r["setting"] == settings[0]] if settings else []
    heads = sorted({r["heads"] for r in first})
    if len(heads) >= 2:
        f_lo = next(r for r in first if r["heads"] == heads[0])
        f_hi = next(r for r in first if r["heads"] == heads[-1])
        for c in CONTEXTS:
            out.append(
                f"Forward FLOPs per token at {c:,} context: "
                f"+{(f_hi[f'gflops_per_token_{c}'] / f_lo[f'gflops_per_token_{c}'] - 1) * 100:.0f}% "
                f"with {heads[-1]} heads."
            )
    out.append(
        f"The same formula on K2's shape, 64 -> 128 heads at 131,072 context: +{k2_flops_increase() * 100:.0f}% "
        "(the report: +83%)."
    )
    out.append(seeds_note(rows))
    return out


def write(runs: list[Run], folder: Path) -> Path:
    rows = summarise(runs)
    plot_series(runs, VAL_LOSS, "model.attention.n_heads", folder / "heads_vs_layers.png", "validation loss")
    found = findings(rows, runs)
    lines = [
        "# Heads vs layers: attention heads against loss and long-context FLOPs",
        "",
        "| setting | layers | heads | seed | final val loss | GFLOPs/token @4k | GFLOPs/token @128k |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['setting']} | {r['layers']} | {r['heads']} | {r['seed']} | {r['final_val_loss']:.3f} | "
            f"{r['gflops_per_token_4096']:.4f} | {r['gflops_per_token_131072']:.4f} |"
        )
    lines += ["", "![val loss](heads_vs_layers.png)", "", "## What this run shows", ""]
    lines += [f"- {f}" for f in found]
    lines += [
        "",
        "## K2's figures",
        "",
        "- 64 heads for 61 layers: at 128k context, doubling the heads costs +83% inference FLOPs for only",
        "  0.5-1.2% lower validation loss.",
    ]
    out = folder / "report.md"
    out.write_text("\n".join(lines) + "\n")
    rows_json = [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows
    ]
    (folder / "report.json").write_text(
        json.dumps({"experiment": "heads_vs_layers", "arms": rows_json, "findings": found}, indent=2)
    )
    return out
