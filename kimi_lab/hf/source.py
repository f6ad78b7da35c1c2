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
    """Read-only access to an HF folder's tensors by name, dequantized on request."""

    def __init__(self, hf_dir: str | Path, quantization: dict[str, Any] | None = None) -> None:
        self.dir = Path(hf_dir)
        self.weight_map, self.total_bytes = read_index(self.dir)
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
        file = self.weight_map.get(name)
        if file is None:
            raise ConfigError(f"{self.dir}: the checkpoint has no tensor {name}")
        try:
            tensor = self._handle(file).get_tensor(self.stored_name.get(name, name))
        except ConfigError:
            raise
        except Exception as exn:  # truncated shard, corrupt header entry
            raise ConfigError(
                f"{self.dir / file}: cannot read {name} ({type(exn).__name__}: {exn})"
            ) from None
        self.reads += 1
        return tensor

    def read_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of a tensor, reading only those bytes (big embeddings in slabs)."""
        file = self.weight_map.get(name)
        if file is None:
            raise ConfigError(f"{self.dir}: the checkpoint has no tensor {name}")
        try:
            tensor = self._handle(file).get_slice(self.stored_name.get(name, name))[start:stop]
        except ConfigError:
            raise
        except Exception as exn:
            raise ConfigError(
                f"{self.dir / file}: cannot read {name} ({type(exn).__name__}: {exn})"
            ) from None
        self.reads += 1
        return tensor

    def shape(self, name: str) -> tuple[int, ...]:
        """A tensor's shape from its shard's header (no data read)."""
        stored = self.stored_name.get(name, name)
        return tuple(self._handle(self.weight_map[name]).get_slice(stored).get_shape())

    def is_quantized(self, base: str) -> bool:
        return f"{base}.weight_packed" in self or f"{base}.weight_scale_inv" in self

    def has_weight(self, base: str) -> bool:
        return f"{base}.weight" in self or f"{base}.weight_packed" in self

    def files_of(self, base: str) -> tuple[str, ...]:
        """The shard(s) a weight's tensors live in (for ordering reads shard by shard)."""
        names = (f"{base}.weight", f"{base}.weight_packed", f"{base}.weight_scale_inv", base)
        return tuple(sorted({self.weight_map[n] for n in names if n in self.weight_map}))

    def weight(self, base: str) -> torch.Tensor:
        """``base.weight`` as float32, dequantized when the checkpoint stores it quantized."""
        if f"{base}.weight_packed" in self:
            return quant.int4_dequantize(
                self.read(f"{base}.weight_packed"),
                self.read(f"{base}.weight_scale"),
                self.read(f"{base}.weight_shape") if f"{base}.weight_shape" in self else None,
                self.int4_scheme,
                where=f"{self.dir}: {base}",
            )
        w = self.read(f"{base}.weight")
        if f"{base}.weight_scale_inv" in self:
            scale = self.read(f"{base}.weight_scale_inv")
            return quant.fp8_dequantize(w, scale, self.fp8_block, where=f"{self.dir}: {base}")
        if w.dtype in quant.FP8_DTYPES:
            raise ConfigError(f"{self.dir}: {base}.weight is FP8 but has no weight_scale_inv")
        return w.float()

    def weight_rows(self, base: str, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of ``base.weight`` as float32, reading only those rows (and, for FP8,
        their blocks' scales): big matrices are converted a slab at a time. FP8 slabs must start
        on a block boundary."""
        w = self.read_rows(f"{base}.weight", start, stop)
        if f"{base}.weight_scale_inv" not in self:
            return w.float()
        bo = self.fp8_block[0]
        if start % bo:
            raise ConfigError(f"{base}: an FP8 slab must start on a {bo}-row block boundary, not row {start}")
        scale = self.read_rows(f"{base}.weight_scale_inv", start // bo, -(-stop // bo))
        return quant.fp8_dequantize(w, scale, self.fp8_block, where=f"{self.dir}: {base}")

    def tensor(self, name: str) -> torch.Tensor:
        """A tensor that is never quantized (norms, biases, embeddings, router biases) as float32."""
        return self.read(name).float()
