"""Report of ``experiment=heads_vs_layers``: attention heads against loss and long-context FLOPs (K2).

K2's claim, from PAPER_NOTES: with 61 layers, 64 heads instead of 128 cost only
0.5-1.2% in validation loss, while 128 heads would add 83% inference FLOPs at 128k
context. Here the arms differ only in heads (head dims fixed); the report puts the
measured loss difference next to the per-token forward FLOPs at long context, from
``forward_flops_per_token`` (multiply-adds x 2, attention over ``context`` keys).
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


def summarise(runs: list[Run]) -> list[dict[str, Any]]:
    from kimi_lab.config import compose, to_run_config

    rows = []
    for run in runs:
        heads = int(run.get("model.attention.n_heads"))
        model = to_run_config(compose([f"model={run.get('model.name')}"])).model
        model = replace(
            model,
            n_layers=int(run.get("model.n_layers")),
            attention=replace(model.attention, n_heads=heads),
        )
        rows.append(
            {
                "job": run.path.name,
                "seed": run.get("seed"),
                "layers": model.n_layers,
                "heads": heads,
                "final_val_loss": run.final(VAL_LOSS, last=2),
                **{f"gflops_per_token_{c}": forward_flops_per_token(model, c) / 1e9 for c in CONTEXTS},
            }
        )
    rows.sort(key=lambda r: (r["heads"], r["seed"] or 0))
    return rows


def k2_flops_increase(context: int = 131072) -> float:
    """K2's shape, 64 -> 128 heads: the extra forward FLOPs per token at ``context`` (the +83% claim)."""
    from kimi_lab.config import compose, to_run_config

    k2 = to_run_config(compose(["model=k2"])).model
    more = replace(k2, attention=replace(k2.attention, n_heads=2 * k2.attention.n_heads))
    return forward_flops_per_token(more, context) / forward_flops_per_token(k2, context) - 1


def findings(rows: list[dict[str, Any]]) -> list[str]:
    by: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        by.setdefault(r["heads"], []).append(r)
    if len(by) < 2:
        return ["Only one head count ran: nothing to compare."]
    lo, hi = min(by), max(by)
    loss = group(rows, "heads", "final_val_loss")
    rel = (loss[lo].mean - loss[hi].mean) / loss[lo].mean * 100
    verdict = describe(compare(loss[hi], loss[lo]))
    out = [
        f"{hi} heads vs {lo} heads ({by[lo][0]['layers']} layers): final val loss {loss[hi].fmt()} vs "
        f"{loss[lo].fmt()}, {abs(rel):.1f}% {'lower' if rel >= 0 else 'higher'} with more heads, {verdict} "
        "(K2: 0.5-1.2% lower with 128 vs 64 heads)."
    ]
    for c in CONTEXTS:
        f_lo = by[lo][0][f"gflops_per_token_{c}"]
        f_hi = by[hi][0][f"gflops_per_token_{c}"]
        out.append(
            f"Forward FLOPs per token at {c:,} context: +{(f_hi / f_lo - 1) * 100:.0f}% with {hi} heads."
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
    found = findings(rows)
    lines = [
        "# Heads vs layers: attention heads against loss and long-context FLOPs",
        "",
        "| layers | heads | seed | final val loss | GFLOPs/token @4k | GFLOPs/token @128k |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['layers']} | {r['heads']} | {r['seed']} | {r['final_val_loss']:.3f} | "
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
