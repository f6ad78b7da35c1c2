"""Safetensors shards written tensor by tensor, with the index json transformers reads.

A shard's header (every name, dtype, shape and byte range) is known from the
shapes alone, so it is written first and each tensor's bytes follow as the
tensor is made: memory holds one tensor (or one slab of rows of a big one),
never a shard. Shards hold at most ``shard_bytes`` (a single larger tensor gets
a shard of its own), named ``model-0000i-of-0000n.safetensors`` as transformers
names them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from kimi_lab.errors import ConfigError

INDEX = "model.safetensors.index.json"
DTYPES = {
    torch.float32: "F32",
    torch.bfloat16: "BF16",
    torch.float16: "F16",
    torch.int32: "I32",
    torch.int64: "I64",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.float8_e4m3fn: "F8_E4M3",
}


@dataclass
class OutTensor:
    """A tensor to write: its name, shape and dtype, and the slabs of rows that make it, in order."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    parts: list[Callable[[], torch.Tensor]]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()


def _split(tensors: list[OutTensor], shard_bytes: int) -> list[list[OutTensor]]:
    shards: list[list[OutTensor]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


def _header(shard: list[OutTensor]) -> bytes:
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for t in shard:
        header[t.name] = {
            "dtype": DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + t.nbytes],
        }
        offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    return len(raw).to_bytes(8, "little") + raw


def _write_tensor(f: object, t: OutTensor) -> None:
    written = 0
    for make in t.parts:
        x = make()
        if x.dtype != t.dtype or tuple(x.shape[1:]) != tuple(t.shape[1:]):
            raise ConfigError(
                f"{t.name}: a part came out {x.dtype} {tuple(x.shape)}, expected {t.dtype} {t.shape}"
            )
        data = x.contiguous().reshape(-1).view(torch.uint8).numpy()
        f.write(data.data)  # type: ignore[attr-defined]
        written += data.nbytes
    if written != t.nbytes:
        raise ConfigError(f"{t.name}: wrote {written} bytes, expected {t.nbytes}")


def write_shards(
    out_dir: Path,
    tensors: list[OutTensor],
    shard_bytes: int,
    on_tensor: Callable[[OutTensor], None] | None = None,
) -> dict[str, object]:
    """Write ``tensors`` as size-capped shards plus the index json into ``out_dir``; returns the index."""
    shards = _split(tensors, shard_bytes)
    weight_map: dict[str, str] = {}
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        with open(out_dir / file, "wb") as f:
            f.write(_header(shard))
            for t in shard:
                _write_tensor(f, t)
                weight_map[t.name] = file
                if on_tensor is not None:
                    on_tensor(t)
    index: dict[str, object] = {
        "metadata": {"total_size": sum(t.nbytes for t in tensors)},
        "weight_map": weight_map,
    }
    (out_dir / INDEX).write_text(json.dumps(index, indent=2))
    return index
