"""The export direction of the adapter: each HF tensor as slabs of kimi_lab rows, made only when written.

A ``Stack`` relation's part is rows of one kimi_lab tensor (an expert's matrix, the
gate half of ``w13``), a plain big matrix is written a slab of rows at a time, and a
``Split`` is made from its kimi_lab tensors when written. With INT4 the parts marked
``quantizable`` (routed experts) are written as K2.5 ships them: ``weight_packed``,
``weight_scale`` and ``weight_shape``. The streamed export writes these tensors into
safetensors shards (``shards``); the in-memory conversion makes each at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from kimi_lab.config.schema import ModelConfig
from kimi_lab.hf import quant
from kimi_lab.hf.adapter import HFLayout, Part, Split, Stack, walk
from kimi_lab.hf.shards import OutTensor


class CheckpointReader:
    """Rows of a kimi_lab model's tensors: from a sharded checkpoint slice by slice, or from a state
    dict (a checkpoint file memory-mapped, or a model's own)."""

    def __init__(
        self,
        state: Mapping[str, torch.Tensor] | None = None,
        sharded: Any = None,
        prefix: str = "",
        slab_bytes: int = 256 << 20,
    ) -> None:
        self.state, self.sharded, self.prefix, self.slab_bytes = state, sharded, prefix, slab_bytes
        self._slab: tuple[str, int, torch.Tensor] | None = None  # (name, first row, rows) last read

    @classmethod
    def open(cls, path: Path, slab_bytes: int = 256 << 20) -> CheckpointReader:
        """A checkpoint folder (sharded) or file (memory-mapped: pages are read when used)."""
        from kimi_lab.decode.loading import PREFIX

        if path.is_dir():
            from kimi_lab.hf.dcp_stream import SliceReader

            return cls(sharded=SliceReader(path), prefix="state_dict." + PREFIX, slab_bytes=slab_bytes)
        from kimi_lab.decode.loading import read_checkpoint

        _, state, _ = read_checkpoint(path)
        return cls(state=state, slab_bytes=slab_bytes)

    def shape(self, name: str) -> tuple[int, ...]:
        if self.state is not None:
            return tuple(self.state[name].shape)
        return self.sharded.shape(self.prefix + name)

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of a tensor (as float32), served from a cached slab when possible."""
        if self.state is not None:
            return self.state[name][start:stop].float()
        s = self._slab
        if s is None or s[0] != name or not (s[1] <= start and stop <= s[1] + s[2].shape[0]):
            shape = self.shape(name)
            end = max(stop, min(shape[0], start + max(1, self.slab_bytes // _row_bytes(shape))))
            s = self._slab = (name, start, self.sharded.read(self.prefix + name, start, end).float())
        return s[2][start - s[1] : stop - s[1]]

    def whole(self, name: str) -> torch.Tensor:
        return self.rows(name, 0, self.shape(name)[0])


def _row_bytes(shape: tuple[int, ...]) -> int:
    """A float32 row's bytes (one dim-0 index)."""
    return 4 * math.prod(shape[1:])


class _Tensors:
    """The HF tensors, in order, each with how to make it from the reader."""

    def __init__(self, reader: CheckpointReader, dtype: torch.dtype, slab_bytes: int, int4: Any) -> None:
        self.reader, self.dtype, self.slab_bytes, self.int4 = reader, dtype, slab_bytes, int4
        self.out: list[OutTensor] = []
        self._int4: tuple[str, dict[str, torch.Tensor]] | None = None

    def put(self, name: str, shape: tuple[int, ...], make: Callable[[], torch.Tensor], dtype: Any) -> None:
        self.out.append(OutTensor(name, tuple(shape), dtype, [lambda: make().to(dtype)]))

    def stack(self, r: Stack) -> None:
        if r.alias:
            return  # its HF tensor is another's (the tied LM head is the embeddings)
        full = self.reader.shape(r.ours)
        n = full[0] // len(r.parts)
        dtype = torch.float32 if r.float32 else self.dtype
        for i, part in enumerate(r.parts):
            if r.quantizable and self.int4 is not None:
                self._int4_part(r.ours, part, i * n, n)
            else:
                self._part(r.ours, part, i * n, n, dtype)

    def _part(self, ours: str, part: Part, a: int, n: int, dtype: torch.dtype) -> None:
        """Rows [a, a + n) of ``ours`` as one HF tensor; a big plain matrix a slab of rows at a time."""
        rows_shape = (n, *self.reader.shape(ours)[1:])
        if part.transform is None and len(rows_shape) == 2 and n * _row_bytes(rows_shape) > self.slab_bytes:
            step = max(1, self.slab_bytes // _row_bytes(rows_shape))
            slabs = [
                (lambda b=b: self.reader.rows(ours, b, min(a + n, b + step)).to(dtype))
                for b in range(a, a + n, step)
            ]
            self.out.append(OutTensor(part.theirs, rows_shape, dtype, slabs))
            return
        fn = part.transform.to_theirs if part.transform else None
        shape = tuple(fn(torch.empty(rows_shape, device="meta")).shape) if fn else rows_shape

        def make() -> torch.Tensor:
            t = self.reader.rows(ours, a, a + n)
            return fn(t) if fn else t

        self.put(part.theirs, shape, make, dtype)

    def _int4_part(self, ours: str, part: Part, a: int, n: int) -> None:
        """One routed expert's matrix as weight_packed / weight_scale / weight_shape."""
        fn = part.transform.to_theirs if part.transform else (lambda t: t)
        rows, cols = fn(torch.empty((n, *self.reader.shape(ours)[1:]), device="meta")).shape
        stem = part.theirs[: -len("weight")]

        def packed(key: str) -> torch.Tensor:
            if self._int4 is None or self._int4[0] != stem:  # the three parts share one quantization
                w = fn(self.reader.rows(ours, a, a + n)).contiguous()
                self._int4 = (stem, quant.int4_quantize(w, self.int4))
            return self._int4[1][key]

        g = self.int4.weights.group_size
        self.put(stem + "weight_packed", (rows, cols * 4 // 32), lambda: packed("weight_packed"), torch.int32)
        self.put(stem + "weight_scale", (rows, cols // g), lambda: packed("weight_scale"), torch.bfloat16)
        self.put(stem + "weight_shape", (2,), lambda: packed("weight_shape"), torch.int32)

    def split(self, r: Split) -> None:
        shapes = []
        for ours, transform in r.parts:
            shape = self.reader.shape(ours)
            meta = torch.empty(shape, device="meta")
            shapes.append(tuple(transform.to_theirs(meta).shape) if transform else shape)
        shape = list(shapes[0])
        shape[r.dim] = sum(s[r.dim] for s in shapes)

        def make() -> torch.Tensor:
            parts = [
                transform.to_theirs(self.reader.whole(ours)) if transform else self.reader.whole(ours)
                for ours, transform in r.parts
            ]
            return torch.cat(parts, dim=r.dim)

        self.put(r.theirs, tuple(shape), make, self.dtype)


def export_tensors(
    cfg: ModelConfig,
    layout: HFLayout,
    reader: CheckpointReader,
    dtype: torch.dtype,
    int4: Any = None,
    slab_bytes: int = 256 << 20,
) -> list[OutTensor]:
    """Every HF tensor of ``layout`` for a ``cfg`` model read through ``reader``, in the adapter's
    order; with ``int4`` (a compressed-tensors scheme) routed experts are written pack-quantized."""
    p = _Tensors(reader, dtype, slab_bytes, int4)
    walk(cfg, layout, p)
    return p.out
