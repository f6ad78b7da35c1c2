"""The tensors of a Hugging Face folder, read one at a time from its safetensors shards.

The index json (or the lone ``model.safetensors``) says which shard holds which
name; a tensor is read with ``safe_open`` only when a conversion asks for it and
the shard is unmapped right after (a mapped shard's touched pages would count
against the process, and released shards are 5-10 GB), so memory holds one
tensor, never a shard or the model. Quantized weights come back dequantized: FP8 block-scaled
(``weight`` + ``weight_scale_inv``) and INT4 pack-quantized (``weight_packed`` +
``weight_scale`` + ``weight_shape``) to float32.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from kimi_lab.errors import ConfigError
from kimi_lab.hf import quant

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


def read_index(hf_dir: Path) -> tuple[dict[str, str], int | None]:
    """(tensor name -> shard file, total bytes if the index says) from the index json, else the headers."""
    index = hf_dir / INDEX
    if index.is_file():
        try:
            data = json.loads(index.read_text())
            weight_map = dict(data["weight_map"])
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as exn:
            raise ConfigError(f"{index}: not a safetensors index ({type(exn).__name__}: {exn})") from None
        total = (data.get("metadata") or {}).get("total_size")
        return weight_map, None if total is None else int(total)
    files = [hf_dir / SINGLE] if (hf_dir / SINGLE).is_file() else sorted(hf_dir.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"{hf_dir}: no {INDEX} and no .safetensors files")
    weight_map = {}
    for f in files:
        for name in _header(f):
            weight_map[name] = f.name
    return weight_map, sum(f.stat().st_size for f in files)


def _header(path: Path) -> dict[str, Any]:
    """A safetensors file's header (names, dtypes, shapes) without reading any tensor data."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n <= 0 or n > 100_000_000:
                raise ValueError(f"header length {n}")
            header = json.loads(f.read(n))
    except (OSError, ValueError) as exn:
        raise ConfigError(f"{path}: not a safetensors file ({exn})") from None
    header.pop("__metadata__", None)
    return header


class Source:
    """Read-only access to an HF checkpoint's tensors by name, dequantized on request: a folder's
    shards, or (``tensors``) a state dict in memory, which the in-memory conversion reads through
    the same plan as the streamed import."""

    def __init__(
        self,
        hf_dir: str | Path,
        quantization: dict[str, Any] | None = None,
        tensors: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        self.dir = Path(hf_dir)
        self.tensors = tensors
        if tensors is None:
            self.weight_map, self.total_bytes = read_index(self.dir)
        else:
            self.weight_map = dict.fromkeys(tensors, "")
            self.total_bytes = sum(t.nbytes for t in tensors.values())
        method = (quantization or {}).get("quant_method")
        self.fp8_block = quant.fp8_block(quantization if method == "fp8" else None)
        self.int4_scheme = quant.int4_scheme(quantization) if method == "compressed-tensors" else None
        self.reads = 0
        self.stored_name: dict[str, str] = {}  # a canonical name -> the name this folder stores it under

    def __contains__(self, name: str) -> bool:
        return name in self.weight_map

    def rename_prefix(self, stored: str, canonical: str) -> None:
        """Answer to ``canonical...`` names for tensors stored as ``stored...`` (a writer's own spelling)."""
        for name in [n for n in self.weight_map if n.startswith(stored)]:
            alias = canonical + name[len(stored) :]
            if alias not in self.weight_map:
                self.weight_map[alias] = self.weight_map[name]
                self.stored_name[alias] = name

    def _handle(self, file: str) -> Any:
        """The shard, opened (its header parsed, its data mapped) for one read."""
        from safetensors import safe_open

        path = self.dir / file
        if not path.is_file():
            raise ConfigError(f"{path}: the index names this shard but it is missing")
        try:
            return safe_open(str(path), framework="pt")
        except Exception as exn:
            raise ConfigError(f"{path}: not a readable safetensors shard ({exn})") from None

    def read(self, name: str) -> torch.Tensor:
        """One tensor as stored (a copy: it outlives the shard's mapping)."""
        return self.read_rows(name, None, None)

    def read_rows(self, name: str, start: int | None, stop: int | None) -> torch.Tensor:
        """Rows [start, stop) of a tensor (all with None), reading only those bytes (big embeddings in slabs)."""
        file = self.weight_map.get(name)
        if file is None:
            raise ConfigError(f"{self.dir}: the checkpoint has no tensor {name}")
        stored = self.stored_name.get(name, name)
        if self.tensors is not None:
            tensor = self.tensors[stored]
            return tensor if start is None else tensor[start:stop]
        try:
            f = self._handle(file)
            tensor = f.get_tensor(stored) if start is None else f.get_slice(stored)[start:stop]
        except ConfigError:
            raise
        except Exception as exn:  # truncated shard, corrupt header entry
            raise ConfigError(
                f"{self.dir / file}: cannot read {name} ({type(exn).__name__}: {exn})"
            ) from None
        self.reads += 1
        return tensor

    def shape(self, name: str) -> tuple[int, ...]:
        """A tensor's shape from its shard's header (no data read)."""
        stored = self.stored_name.get(name, name)
        if self.tensors is not None:
            return tuple(self.tensors[stored].shape)
        return tuple(self._handle(self.weight_map[name]).get_slice(stored).get_shape())

    # A name ending in ``.weight`` may be stored quantized: as ``weight`` + ``weight_scale_inv``
    # (FP8) or as ``weight_packed`` + ``weight_scale`` + ``weight_shape`` (INT4, no ``weight``).
    def holds(self, name: str) -> bool:
        """Whether the checkpoint has ``name``, plain or quantized."""
        return name in self or _stem(name) + "weight_packed" in self

    def is_packed(self, name: str) -> bool:
        """An INT4 weight: unpacked whole, never in slabs of rows."""
        return _stem(name) + "weight_packed" in self

    def parts(self, name: str) -> list[str]:
        """The stored tensors that make ``name`` (itself, and its scales or packed parts if quantized)."""
        stem = _stem(name)
        extra = [stem + p for p in QUANT_PARTS] if stem != name else []
        return [n for n in (name, *extra) if n in self]

    def files_of(self, name: str) -> tuple[str, ...]:
        """The shard(s) a tensor's parts live in (for ordering reads shard by shard)."""
        return tuple(sorted({self.weight_map[n] for n in self.parts(name)}))

    def get(self, name: str) -> torch.Tensor:
        """A tensor as float32; a weight dequantized when the checkpoint stores it quantized."""
        stem = _stem(name)
        if stem + "weight_packed" in self:
            return quant.int4_dequantize(
                self.read(stem + "weight_packed"),
                self.read(stem + "weight_scale"),
                self.read(stem + "weight_shape") if stem + "weight_shape" in self else None,
                self.int4_scheme,
                where=f"{self.dir}: {stem[:-1]}",
            )
        w = self.read(name)
        if stem + "weight_scale_inv" in self:
            scale = self.read(stem + "weight_scale_inv")
            return quant.fp8_dequantize(w, scale, self.fp8_block, where=f"{self.dir}: {stem[:-1]}")
        if w.dtype in quant.FP8_DTYPES:
            raise ConfigError(f"{self.dir}: {name} is FP8 but has no weight_scale_inv")
        return w.float()

    def get_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of a tensor as float32, reading only those rows (and, for FP8, their
        blocks' scales): big matrices are converted a slab at a time. FP8 slabs must start on a
        block boundary."""
        w = self.read_rows(name, start, stop)
        stem = _stem(name)
        if stem + "weight_scale_inv" not in self:
            return w.float()
        bo = self.fp8_block[0]
        if start % bo:
            raise ConfigError(
                f"{stem[:-1]}: an FP8 slab must start on a {bo}-row block boundary, not row {start}"
            )
        scale = self.read_rows(stem + "weight_scale_inv", start // bo, -(-stop // bo))
        return quant.fp8_dequantize(w, scale, self.fp8_block, where=f"{self.dir}: {stem[:-1]}")


# the stored parts of a quantized weight besides ``weight``
QUANT_PARTS = ("weight_scale_inv", "weight_packed", "weight_scale", "weight_shape")


def _stem(name: str) -> str:
    """``x.weight`` -> ``x.`` (where a quantized weight's parts sit); any other name stays itself."""
    return name[: -len("weight")] if name.endswith(".weight") else name
