"""The import direction of the adapter: each kimi_lab tensor as chunks of HF tensors, read only when written.

A ``Stack`` relation gives one chunk per part (an expert's slab of the stacked
experts, the gate or up half of ``w13``), and a big plain matrix (embeddings, the LM
head, a dense FFN) a chunk per slab of rows, so no chunk holds more than
``slab_bytes`` of it; a ``Split`` gives each of its kimi_lab tensors one chunk cut
from the HF tensor. The streamed import writes the chunks into a sharded checkpoint
(``dcp_stream``); the in-memory conversion fills a state dict from them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from kimi_lab.errors import ConfigError
from kimi_lab.hf.adapter import Split, Stack, detect_layout, walk
from kimi_lab.hf.config import HFConfig
from kimi_lab.hf.dcp_stream import Chunk
from kimi_lab.hf.source import Source


class _Chunks:
    """Collects the chunks of one model's kimi_lab tensors, and which HF tensors they read."""

    def __init__(
        self,
        src: Source,
        shapes: dict[str, tuple[int, ...]],
        dtype: torch.dtype,
        prefix: str,
        slab_bytes: int,
    ) -> None:
        self.src, self.shapes, self.dtype, self.prefix = src, shapes, dtype, prefix
        self.slab_bytes = slab_bytes
        self.chunks: list[Chunk] = []
        self.used: set[str] = set()

    def add(
        self,
        ours: str,
        make: Callable[[], torch.Tensor],
        names: tuple[str, ...],
        offset: int = 0,
        rows: int | None = None,
    ) -> None:
        if ours not in self.shapes:
            raise ConfigError(f"kimi_lab's model has no tensor {ours} (the layout mapping is out of date)")
        for n in names:
            if not self.src.holds(n):
                raise ConfigError(f"{self.src.dir}: the checkpoint lacks {n} (needed for {ours})")
            self.used.update(self.src.parts(n))
        size = self.shapes[ours]
        files = tuple(f for n in names for f in self.src.files_of(n))
        self.chunks.append(
            Chunk(
                self.prefix + ours, size, self.dtype, offset, size[0] if rows is None else rows, make, files
            )
        )

    def stack(self, r: Stack) -> None:
        if r.optional and not any(self.src.holds(p.theirs) for p in r.parts):
            # a checkpoint without selection biases starts them at zero
            self.add(r.ours, lambda: torch.zeros(self.shapes[r.ours]), ())
            return
        n = self.shapes.get(r.ours, (0,))[0] // len(r.parts)
        for i, part in enumerate(r.parts):
            if part.transform is None and self._slabs(r.ours, part.theirs, i * n, n):
                continue
            fn = part.transform.to_ours if part.transform else None
            make = lambda name=part.theirs, fn=fn: fn(self.src.get(name)) if fn else self.src.get(name)  # noqa: E731
            self.add(r.ours, make, (part.theirs,), offset=i * n, rows=n)

    def split(self, r: Split) -> None:
        start = 0
        for ours, transform in r.parts:
            width = self.shapes[ours][r.dim] if ours in self.shapes else 0
            fn = transform.to_ours if transform else None

            def make(a: int = start, width: int = width, fn: Callable | None = fn) -> torch.Tensor:
                t = self.src.get(r.theirs).narrow(r.dim, a, width)
                return fn(t) if fn else t

            self.add(ours, make, (r.theirs,))
            start += width

    def _slabs(self, ours: str, name: str, offset: int, rows: int) -> bool:
        """A big matrix converted in slabs of rows, never whole, placed at rows [offset, offset + rows)
        of ``ours``; FP8 slabs span whole blocks of rows, so each reads only its own scales. False
        (nothing added) when the matrix is small or INT4."""
        size = self.shapes.get(ours, ())
        if len(size) != 2 or self.src.is_packed(name):
            return False
        row_bytes = 4 * size[1]
        if rows * row_bytes <= self.slab_bytes:
            return False
        step = max(1, self.slab_bytes // row_bytes)
        if name[: -len("weight")] + "weight_scale_inv" in self.src:
            bo = self.src.fp8_block[0]
            step = max(bo, step // bo * bo)
        for start in range(0, rows, step):
            stop = min(rows, start + step)
            make = lambda a=start, b=stop: self.src.get_rows(name, a, b)  # noqa: E731
            self.add(ours, make, (name,), offset=offset + start, rows=stop - start)
        return True


def import_chunks(
    hf: HFConfig,
    src: Source,
    shapes: dict[str, tuple[int, ...]],
    dtype: torch.dtype,
    prefix: str,
    slab_bytes: int = 256 << 20,
) -> tuple[list[Chunk], list[str]]:
    """Every chunk of every tensor of kimi_lab's model (checking the map covers the model exactly),
    the checkpoint's layout found from its tensor names, and the checkpoint's tensors no chunk
    reads (multi-token-prediction layers, ...)."""
    p = _Chunks(src, shapes, dtype, prefix, slab_bytes)
    walk(hf.model, detect_layout(src, hf.model, hf.rope_interleave), p)
    made = {c.fqn[len(prefix) :] for c in p.chunks}
    missing = sorted(set(shapes) - made)
    if missing:
        raise ConfigError(f"no HF source for kimi_lab's {missing[0]} (and {len(missing) - 1} more)")
    used = {src.stored_name.get(n, n) for n in p.used}
    stored = set(src.weight_map) - set(src.stored_name)
    return p.chunks, sorted(stored - used)
