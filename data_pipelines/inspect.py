"""``kimi-lab data inspect DIR [--json]``: what is in a folder of shards, and what is broken.

Every sample of every shard is decoded (text, images, video, records), so the
report's failure counts are the ones training would hit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kimi_lab.data.decode import SKIP_REASONS, Parsed, SampleSkip, parse_sample
from kimi_lab.data.shards import check_tar, iter_shard_samples
from kimi_lab.errors import DataError


def _preview(p: Parsed) -> dict[str, Any]:
    out: dict[str, Any] = {"key": p.key, "modality": p.modality, "source": p.record.get("source")}
    parts = []
    for kind, value in p.parts:
        if kind == "text":
            snippet = value[:120].replace("\n", "\\n")
            parts.append({"text": snippet + ("..." if len(value) > 120 else ""), "chars": len(value)})
        elif kind == "image":
            parts.append({"image": f"{value.shape[1]}x{value.shape[0]}"})
        elif kind == "chat":
            messages, images = value
            for m in messages:
                text = m.content + "".join(f" [{c.name} call: {len(c.input)} chars]" for c in m.tool_calls)
                parts.append({m.role: text[:120].replace("\n", "\\n") + ("..." if len(text) > 120 else "")})
            for name, media in images.items():
                size = f"{media.shape[-2]}x{media.shape[-3]}"
                parts.append(
                    {"video": f"{name}: {media.shape[0]} frames of {size}"}
                    if media.ndim == 4
                    else {"image": f"{name}: {size}"}
                )
        else:
            parts.append({"video": f"{value.shape[0]} frames of {value.shape[2]}x{value.shape[1]}"})
    out["parts"] = parts
    labels = p.record.get("provenance", {}).get("labels")
    if labels:
        out["labels"] = labels
    return out


def inspect_dir(path: str | Path, previews: int = 3) -> dict[str, Any]:
    root = Path(path)
    if root.is_file():
        shards = [root]
    elif root.is_dir():
        shards = sorted(root.glob("*.tar"))
    else:
        raise DataError(f"{root}: no such file or folder")
    if not shards:
        raise DataError(f"{root}: no .tar shards in this folder")
    report: dict[str, Any] = {"path": str(root), "shards": [], "previews": []}
    manifest = root / "manifest.json" if root.is_dir() else None
    if manifest is not None and manifest.is_file():
        report["manifest"] = json.loads(manifest.read_text())
    totals: dict[str, Any] = {
        "samples": 0,
        "bytes": 0,
        "modalities": {},
        "failures": dict.fromkeys(SKIP_REASONS, 0),
    }
    for shard in shards:
        info: dict[str, Any] = {
            "name": shard.name,
            "bytes": shard.stat().st_size,
            "samples": 0,
            "modalities": {},
            "failures": {},
        }
        try:
            check_tar(str(shard), "shard")
        except DataError as exn:
            info["failures"]["corrupt_tar"] = 1
            info["error"] = str(exn)
            report["shards"].append(info)
            totals["failures"]["corrupt_tar"] += 1
            continue

        def corrupt(exn: Exception, info: dict[str, Any] = info) -> bool:
            info["failures"]["corrupt_tar"] = info["failures"].get("corrupt_tar", 0) + 1
            return True

        for sample in iter_shard_samples(iter([str(shard)]), corrupt):
            info["samples"] += 1
            try:
                parsed = parse_sample(sample)
            except SampleSkip as skip:
                info["failures"][skip.reason] = info["failures"].get(skip.reason, 0) + 1
                continue
            info["modalities"][parsed.modality] = info["modalities"].get(parsed.modality, 0) + 1
            if len(report["previews"]) < previews:
                report["previews"].append({"shard": shard.name, **_preview(parsed)})
        report["shards"].append(info)
        totals["samples"] += info["samples"]
        totals["bytes"] += info["bytes"]
        for m, c in info["modalities"].items():
            totals["modalities"][m] = totals["modalities"].get(m, 0) + c
        for r, c in info["failures"].items():
            totals["failures"][r] += c
    report["totals"] = totals
    return report


def format_report(report: dict[str, Any]) -> str:
    t = report["totals"]
    lines = [
        f"{report['path']}: {len(report['shards'])} shard(s), {t['samples']} samples, {t['bytes'] / 1e6:.1f} MB"
    ]
    lines.append(
        "  modalities: " + (", ".join(f"{m} {c}" for m, c in sorted(t["modalities"].items())) or "none")
    )
    failed = {r: c for r, c in t["failures"].items() if c}
    lines.append(
        "  decode failures: " + (", ".join(f"{r} {c}" for r, c in failed.items()) if failed else "none")
    )
    lines.append(f"  {'shard':<22} {'samples':>8} {'MB':>7}  modalities / failures")
    for s in report["shards"]:
        mods = ", ".join(f"{m} {c}" for m, c in sorted(s["modalities"].items()))
        fails = ", ".join(f"{r} {c}" for r, c in s["failures"].items())
        lines.append(
            f"  {s['name']:<22} {s['samples']:>8} {s['bytes'] / 1e6:>7.2f}  {mods}{' | ' + fails if fails else ''}"
        )
    for p in report["previews"]:
        parts = "; ".join(next(f"{k}: {v}" for k, v in part.items() if k != "chars") for part in p["parts"])
        lines.append(f"  preview {p['shard']} {p['key']} [{p['modality']}] {parts}")
    return "\n".join(lines)
