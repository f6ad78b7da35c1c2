"""What importing an HF folder will produce and need, from config.json and the index alone.

``kimi-lab params HF_DIR`` and ``kimi-lab import-hf HF_DIR --dry-run`` print it: the
model (parameters, total and active), the source (shards, bytes, quantization), the
sharded checkpoint the import writes (bytes at float32 and bfloat16, chunks, files)
and the memory it takes. The chunk plan is the import's own, built without reading
a tensor, so the figures are the ones the import will meet.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from kimi_lab.hf.importer import DTYPES, STATE, model_shapes, resolve_config
from kimi_lab.hf.source import Source

# the interpreter, torch and the plan itself, measured at about 0.5 GiB; rounded up
BASE_BYTES = 1 << 30
# a chunk in flight: the stored tensor, its float32 copy, a dequantization temporary and the output
CHUNK_COPIES = 4


def describe(hf_dir: str | Path, file_bytes: int = 1 << 30) -> dict[str, Any]:
    """The plan of importing ``hf_dir`` as a dict (bytes as integers)."""
    from kimi_lab.hf.import_chunks import import_chunks
    from kimi_lab.model.params import count_params

    hf_dir = Path(hf_dir)
    hf = resolve_config(hf_dir)
    src = Source(hf_dir, hf.quantization)
    shapes = model_shapes(hf.model)
    chunks, unused = import_chunks(hf, src, shapes, torch.float32, STATE)
    counts = count_params(hf.model)
    files = sorted(set(src.weight_map.values()))
    method = (hf.quantization or {}).get("quant_method")
    quantized = {
        "fp8 block-scaled": sum(1 for n in src.weight_map if n.endswith(".weight_scale_inv")),
        "int4 pack-quantized": sum(1 for n in src.weight_map if n.endswith(".weight_packed")),
    }
    numel = sum(math.prod(s) for s in shapes.values())
    largest = max(c.nbytes for c in chunks)
    return {
        "model": {
            "name": hf.model.name,
            "model_type": hf.model_type,
            "layers": hf.model.n_layers,
            "hidden_size": hf.model.hidden_size,
            "routed_experts": hf.model.moe.n_routed_experts,
            "vision_tower": hf.model.vision is not None,
            "total_params": counts.total,
            "active_params": counts.active,
        },
        "source": {
            "folder": str(hf_dir),
            "shards": len(files),
            "tensors": len(src.weight_map),
            "bytes": src.total_bytes,
            "quantization": method,
            "quantized_weights": {k: v for k, v in quantized.items() if v},
            "not_imported": len(unused),
            "not_imported_example": unused[0] if unused else None,
        },
        "output": {
            "tensors": len(shapes),
            "chunks": len(chunks),
            "bytes": {name: numel * torch.empty((), dtype=dt).element_size() for name, dt in DTYPES.items()},
            "files": {
                name: math.ceil(numel * torch.empty((), dtype=dt).element_size() / file_bytes)
                for name, dt in DTYPES.items()
            },
        },
        "memory": {
            "file_bytes": file_bytes,
            "largest_chunk_bytes": largest,
            # a file's chunks stay referenced until the file is closed
            "peak_bytes_estimate": BASE_BYTES + min(file_bytes, numel * 4) + CHUNK_COPIES * largest,
        },
    }


def _gb(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / 1e9:,.1f} GB" if n >= 1e9 else f"{n / 1e6:,.1f} MB"


def format_plan(plan: dict[str, Any]) -> str:
    m, s, o, mem = plan["model"], plan["source"], plan["output"], plan["memory"]
    quant = ", ".join(f"{v:,} {k}" for k, v in s["quantized_weights"].items()) or "none"
    lines = [
        f"{s['folder']}: {m['model_type']}, {m['layers']} layers, hidden {m['hidden_size']}, "
        f"{m['routed_experts']} routed experts{' + vision tower' if m['vision_tower'] else ''}",
        f"  parameters       {m['total_params']:,} total, {m['active_params']:,} active per token",
        f"  source           {s['shards']} shards, {s['tensors']:,} tensors, {_gb(s['bytes'])}; "
        f"quantized weights: {quant}",
        f"  import writes    a sharded checkpoint of {o['tensors']} tensors in {o['chunks']:,} chunks: "
        f"{_gb(o['bytes']['float32'])} at float32 ({o['files']['float32']:,} files), "
        f"{_gb(o['bytes']['bfloat16'])} at --dtype bfloat16",
        f"  memory           about {_gb(mem['peak_bytes_estimate'])} peak "
        f"(--file-mb {mem['file_bytes'] >> 20} of chunks per output file + the largest chunk, "
        f"{_gb(mem['largest_chunk_bytes'])}, in flight)",
    ]
    if s["not_imported"]:
        lines.append(
            f"  not imported     {s['not_imported']:,} tensors no kimi_lab tensor uses "
            f"(e.g. {s['not_imported_example']}; multi-token-prediction layers are not modelled)"
        )
    return "\n".join(lines)
