"""Write a sharded (torch.distributed.checkpoint) checkpoint one chunk at a time.

``dcp.save`` normally takes a state dict of materialised tensors. Here a custom
``SavePlanner`` announces every tensor as a list of chunks (an expert's slab of a
stacked expert tensor, the gate half of a fused SwiGLU matrix, ...) and produces
each chunk only when the writer asks for it (``resolve_data``), so memory holds
one chunk at a time. The writer starts a new ``.distcp`` file every ``file_bytes``
(torch's own writer would keep a reference to every tensor of a file until the
file is closed). The result is an ordinary DCP folder: ``dcp.load`` reads it into
a whole, FSDP2-sharded or expert-parallel model alike, chunks reassembled by offset.
"""

from __future__ import annotations

import dataclasses
import queue
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemWriter
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import create_default_global_save_plan
from torch.distributed.checkpoint.metadata import (
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import (
    LoadPlan,
    LoadPlanner,
    ReadItem,
    SavePlan,
    SavePlanner,
    TensorWriteData,
    WriteItem,
    WriteItemType,
)
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

from kimi_lab.errors import ConfigError, KimiLabError, one_line


@dataclass
class Chunk:
    """One block of a tensor: where it sits (offset along dim 0) and how to make it."""

    fqn: str
    size: tuple[int, ...]  # the whole tensor's shape
    dtype: torch.dtype
    offset: int  # along dim 0
    rows: int  # the chunk spans rows [offset, offset + rows) of dim 0
    make: Callable[[], torch.Tensor]
    order: Any = ""  # chunks are written sorted by this (e.g. the source shard), for locality

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.rows, *self.size[1:])

    @property
    def nbytes(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n * torch.empty((), dtype=self.dtype).element_size()


def _item(c: Chunk) -> WriteItem:
    offsets = torch.Size([c.offset] + [0] * (len(c.size) - 1))
    return WriteItem(
        index=MetadataIndex(c.fqn, offsets),
        type=WriteItemType.SHARD,
        tensor_data=TensorWriteData(
            chunk=ChunkStorageMetadata(offsets=offsets, sizes=torch.Size(c.shape)),
            properties=TensorProperties(dtype=c.dtype),
            size=torch.Size(c.size),
        ),
    )


class _ChunkPlanner(SavePlanner):
    """Plans every chunk up front (metadata only) and makes each when it is written."""

    def __init__(self, chunks: list[Chunk], on_chunk: Callable[[Chunk], None] | None) -> None:
        self.chunks = {(c.fqn, c.offset): c for c in chunks}
        self.items = [_item(c) for c in chunks]
        self.on_chunk = on_chunk
        self.error: BaseException | None = None  # the first failure, re-raised as itself after dcp.save

    def set_up_planner(self, state_dict: Any, storage_meta: Any = None, is_coordinator: bool = False) -> None:
        pass

    def create_local_plan(self) -> SavePlan:
        return SavePlan(self.items)

    def create_global_plan(self, all_plans: list[SavePlan]) -> tuple[list[SavePlan], Metadata]:
        plans, md = create_default_global_save_plan(all_plans)
        # how each flat name nests ("state_dict.model.x" -> ["state_dict"]["model.x"]), as
        # DefaultSavePlanner records it, so consolidating the folder gives the nested dict back
        nesting = {fqn: tuple(fqn.split(".", 1)) for fqn in md.state_dict_metadata}
        return plans, dataclasses.replace(md, planner_data=nesting)

    def finish_plan(self, new_plan: SavePlan) -> SavePlan:
        return new_plan

    def resolve_data(self, write_item: WriteItem) -> torch.Tensor:
        c = self.chunks[(write_item.index.fqn, write_item.index.offset[0])]
        try:
            t = c.make()
            if tuple(t.shape) != c.shape:
                raise ConfigError(f"{c.fqn}: a chunk came out {tuple(t.shape)}, expected {c.shape}")
        except BaseException as exn:
            self.error = self.error or exn
            raise
        t = t.to(c.dtype).contiguous()
        if self.on_chunk is not None:
            self.on_chunk(c)
        return t


class _BoundedFileWriter(FileSystemWriter):
    """A FileSystemWriter that starts a new file every ``file_bytes`` of tensors."""

    def __init__(self, path: str, file_bytes: int) -> None:
        super().__init__(path, single_file_per_rank=True, sync_files=True, thread_count=1, overwrite=False)
        self.file_bytes = file_bytes

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Any:
        prefix = plan.storage_data.prefix
        files: queue.Queue = queue.Queue()
        for i, items in enumerate(_bins(plan.items, self.file_bytes)):
            name = f"{prefix}{i}.distcp"
            files.put((self.fs.concat_path(self.path, name), name, items))
        if not hasattr(self, "_write_data"):  # a torch without the writer's file-queue hook
            raise ConfigError(f"torch {torch.__version__}: the checkpoint writer lacks _write_data")
        return self._write_data(planner, files)


def _bins(items: list[WriteItem], cap: int) -> Iterator[list[WriteItem]]:
    current: list[WriteItem] = []
    size = 0
    for wi in items:
        td = wi.tensor_data
        assert td is not None
        n = td.chunk.sizes.numel() * torch.empty((), dtype=td.properties.dtype).element_size()
        if current and size + n > cap:
            yield current
            current, size = [], 0
        current.append(wi)
        size += n
    if current:
        yield current


def write_chunks(
    out_dir: Path,
    chunks: list[Chunk],
    file_bytes: int = 1 << 30,
    on_chunk: Callable[[Chunk], None] | None = None,
) -> None:
    """Write ``chunks`` as a DCP checkpoint in ``out_dir`` (which must not hold one yet)."""
    import torch.distributed.checkpoint as dcp

    covered: dict[str, int] = {}
    for c in chunks:
        covered[c.fqn] = covered.get(c.fqn, 0) + c.rows
    for c in chunks:
        if covered[c.fqn] != c.size[0]:
            raise ConfigError(f"{c.fqn}: chunks cover {covered[c.fqn]} of {c.size[0]} rows")
    chunks = sorted(chunks, key=lambda c: (c.order, c.fqn, c.offset))
    writer = _BoundedFileWriter(str(out_dir), file_bytes)
    planner = _ChunkPlanner(chunks, on_chunk)
    try:
        with warnings.catch_warnings():  # "assuming the intent is to save in a single process": it is
            warnings.filterwarnings("ignore", message=".*single process.*")
            dcp.save({}, storage_writer=writer, planner=planner, no_dist=True)
    except (Exception, CheckpointException) as exn:
        # dcp.save wraps a chunk's failure in its own exception (a BaseException): surface the original
        if isinstance(planner.error, KimiLabError):
            raise planner.error from None
        cause = planner.error or exn
        raise ConfigError(
            f"{out_dir}: writing the checkpoint failed ({type(cause).__name__}: {one_line(cause)})"
        ) from None


class _SliceLoader(LoadPlanner):
    """Fills row slices of tensors from a checkpoint (the reading half of chunk-by-chunk)."""

    def __init__(self, buffers: dict[tuple[str, int], torch.Tensor]) -> None:
        self.buffers = buffers  # (fqn, first row) -> the slice's tensor

    def set_up_planner(self, state_dict: Any, metadata: Any = None, is_coordinator: bool = False) -> None:
        pass

    def create_local_plan(self) -> LoadPlan:
        raise NotImplementedError  # plans are built by SliceReader.read

    def create_global_plan(self, global_plan: list[LoadPlan]) -> list[LoadPlan]:
        return global_plan

    def finish_plan(self, central_plan: LoadPlan) -> LoadPlan:
        return central_plan

    def load_bytes(self, read_item: ReadItem, value: Any) -> None:
        raise ConfigError(f"{read_item.dest_index.fqn}: expected a tensor, found bytes")

    def resolve_tensor(self, read_item: ReadItem) -> torch.Tensor:
        t = self.buffers[(read_item.dest_index.fqn, read_item.dest_index.offset[0])]
        for dim, (start, length) in enumerate(zip(read_item.dest_offsets, read_item.lengths)):
            t = t.narrow(dim, start, length)
        return t

    def commit_tensor(self, read_item: ReadItem, tensor: torch.Tensor) -> None:
        pass  # read_data copied into the slice already


class SliceReader:
    """Rows of a sharded checkpoint's tensors, read without loading whole tensors or the model."""

    def __init__(self, path: Path) -> None:
        from torch.distributed.checkpoint import FileSystemReader

        self.reader = FileSystemReader(str(path))
        self.metadata = self.reader.read_metadata()
        self.reader.set_up_storage_reader(self.metadata, is_coordinator=True)

    def shape(self, fqn: str) -> tuple[int, ...]:
        return tuple(self._md(fqn).size)

    def _md(self, fqn: str) -> TensorStorageMetadata:
        md = self.metadata.state_dict_metadata.get(fqn)
        if not isinstance(md, TensorStorageMetadata):
            raise ConfigError(f"the sharded checkpoint has no tensor {fqn}")
        return md

    def read(self, fqn: str, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of ``fqn`` (dim 0), in the dtype it was saved in."""
        md = self._md(fqn)
        size = tuple(md.size)
        rows = (stop - start, *size[1:])
        buf = torch.empty(rows, dtype=md.properties.dtype)
        offsets = torch.Size([start] + [0] * (len(size) - 1))
        local = [ChunkStorageMetadata(offsets=offsets, sizes=torch.Size(rows))]
        items = create_read_items_for_chunk_list(fqn, md, local)
        planner = _SliceLoader({(fqn, start): buf})
        plan = self.reader.prepare_local_plan(LoadPlan(items))
        self.reader.read_data(plan, planner).wait()
        return buf
