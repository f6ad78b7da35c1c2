"""The streaming pipeline: shards -> samples -> documents -> packed batches, resumable.

Each DataLoader worker runs one *stream*: per source a shard reader (training:
shards resampled forever, every epoch in a fresh seeded order; validation: one
pass in order) and a shuffle buffer; a mixer that picks each document's source;
the decoder; and the packer. Batches are assembled inside the worker and carry
``meta``: the stream's state at the start of the next window, which the
datamodule records for consumed batches and saves in checkpoints.

The state is small and exact: reader positions (epoch, shard, sample), shuffle
and mixer draw counters, token counts, and where in a document the next window
starts. Restoring it replays nothing and skips nothing, except what sat in the
shuffle buffers (none with ``shuffle_buffer <= 1``).
"""

from __future__ import annotations

import copy
import logging
import math
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

from kimi_lab.config.schema import DataConfig
from kimi_lab.data.decode import SKIP_REASONS, Decoder, SampleSkip
from kimi_lab.data.mixing import Mixer, MixerState
from kimi_lab.data.packing import Packer, SpecialIds, Window, loss_mask
from kimi_lab.data.shards import iter_shard_samples
from kimi_lab.data.stats import BatchStats
from kimi_lab.data.tokenizer import open_tokenizer
from kimi_lab.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class ReaderState:
    epoch: int = 0
    shard: int = 0  # index in this epoch's shard order
    sample: int = 0  # samples already handed out from that shard


@dataclass
class StreamState:
    stream_id: int
    readers: dict[str, ReaderState] = field(default_factory=dict)
    shuffles: dict[str, int] = field(default_factory=dict)  # draws per source's shuffle buffer
    mixer: MixerState = field(default_factory=MixerState)
    doc_offset: int = 0  # tokens of the next document that earlier windows already hold
    skipped: dict[str, int] = field(default_factory=dict)  # by reason, cumulative

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StreamState:
        return cls(
            stream_id=d["stream_id"],
            readers={k: ReaderState(**v) for k, v in d["readers"].items()},
            shuffles=dict(d["shuffles"]),
            mixer=MixerState(**d["mixer"]),
            doc_offset=d["doc_offset"],
            skipped=dict(d["skipped"]),
        )


@dataclass
class SourceSpec:
    name: str
    urls: list[str]
    weight: float
    vision: bool  # holds images or video (subject to the fusion schedule)


class ShardReader:
    """Samples of one source, advancing a ``ReaderState`` as they are handed out."""

    def __init__(
        self, spec: SourceSpec, seed: str, state: ReaderState, resample: bool, on_error: Any
    ) -> None:
        self.spec, self.seed, self.state, self.resample, self.on_error = spec, seed, state, resample, on_error
        self._it: Iterator[dict] | None = None

    def order(self, epoch: int) -> list[str]:
        urls = list(self.spec.urls)
        if self.resample:
            random.Random(f"{self.seed}/{self.spec.name}/epoch{epoch}").shuffle(urls)
        return urls

    def _samples(self) -> Iterator[dict]:
        st = self.state
        while True:
            order = self.order(st.epoch)
            full_pass = st.shard == 0 and st.sample == 0
            usable = 0
            while st.shard < len(order):
                url = order[st.shard]
                for i, sample in enumerate(iter_shard_samples(iter([url]), self.on_error)):
                    if i < st.sample:
                        continue  # handed out before the resume
                    st.sample = i + 1
                    usable += 1
                    yield sample
                st.shard += 1
                st.sample = 0
            if not self.resample:
                return
            if full_pass and usable == 0:
                raise DataError(
                    f"source {self.spec.name!r}: no readable sample in {len(order)} shard(s), e.g. {order[0]}"
                )
            st.epoch += 1
            st.shard = 0

    def __next__(self) -> dict:
        if self._it is None:
            self._it = self._samples()
        return next(self._it)


class ShuffleBuffer:
    """Draw-counter-seeded shuffle buffer over a reader (refills empty after a resume)."""

    def __init__(self, reader: ShardReader, size: int, seed: str, draws: int) -> None:
        self.reader, self.size, self.seed, self.draws = reader, size, seed, draws
        self.pool: list[dict] = []
        self.exhausted = False

    def __next__(self) -> dict:
        if self.size <= 1:
            self.draws += 1
            return next(self.reader)
        while not self.exhausted and len(self.pool) < self.size:
            try:
                self.pool.append(next(self.reader))
            except StopIteration:
                self.exhausted = True
        if not self.pool:
            raise StopIteration
        i = random.Random(f"{self.seed}/shuffle{self.draws}").randrange(len(self.pool))
        self.draws += 1
        self.pool[i], self.pool[-1] = self.pool[-1], self.pool[i]
        return self.pool.pop()


class MixedStream(IterableDataset):
    """Batches {"tokens", "loss_mask", "loss_subsets", "input_mask", "pixel_values", "image_grid_thw",
    "pixel_values_videos", "video_grid_thw", "meta"}, and "segment_ids", "positions" when a window holds
    a conversation."""

    def __init__(
        self,
        sources: list[SourceSpec],
        cfg: DataConfig,
        *,
        train: bool,
        seed: int = 0,
        rank: int = 0,
        states: dict[int, dict[str, Any]] | None = None,
        first_batch: int = 0,
        batches_per_step: int = 1,
        vision_start_step: int = 0,
        max_batches: int | None = None,
    ) -> None:
        super().__init__()
        self.sources = {s.name: s for s in sources}
        self.cfg = cfg
        self.train, self.seed, self.rank = train, seed, rank
        self.states = states or {}  # restored stream states by DataLoader slot
        self.first_batch = first_batch  # global index of the batch the first slot yields first
        self.batches_per_step = batches_per_step
        self.vision_start_step = vision_start_step
        self.max_batches = max_batches

    # ------------------------------------------------------------------ plumbing
    def _slot(self) -> tuple[int, int]:
        info = get_worker_info()
        if info is None:
            return 0, 1
        torch.set_num_threads(1)  # the trainer owns the cores
        return info.id, info.num_workers

    def _fresh_state(self, slot: int, n_slots: int) -> StreamState:
        return StreamState(stream_id=self.rank * n_slots + slot)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        slot, n_slots = self._slot()
        restored = self.states.get(slot)
        state = StreamState.from_dict(restored) if restored else self._fresh_state(slot, n_slots)
        for name in self.sources:
            state.readers.setdefault(name, ReaderState())
            state.shuffles.setdefault(name, 0)
        yield from _Worker(self, state, slot, n_slots).run()


class _Worker:
    """One stream's loop (lives in a DataLoader worker, or the main process)."""

    def __init__(self, ds: MixedStream, state: StreamState, slot: int, n_slots: int) -> None:
        self.ds, self.state, self.slot, self.n_slots = ds, state, slot, n_slots
        cfg = ds.cfg
        self.strict = cfg.strict
        seed = f"{ds.seed}/{state.stream_id}"
        self.tok = open_tokenizer(cfg.tokenizer)
        self.ids = SpecialIds.from_tokenizer(self.tok)
        self.decoder = Decoder(self.tok, cfg.vision)
        self.packer = Packer(cfg.seq_len, self.ids)
        self.buffers = {
            name: ShuffleBuffer(
                ShardReader(spec, seed, state.readers[name], ds.train, self._tar_error),
                cfg.shuffle_buffer if ds.train else 0,
                f"{seed}/{name}",
                state.shuffles[name],
            )
            for name, spec in ds.sources.items()
        }
        self.mixer = Mixer(
            {n: s.weight for n, s in ds.sources.items()},
            {n for n, s in ds.sources.items() if s.vision},
            seed,
            ds.vision_start_step if ds.train else 0,
            cfg.fusion.vision_ratio if ds.train else None,
            state.mixer,
        )
        self.exhausted: set[str] = set()
        self.last_ok_epoch = {name: self.state.readers[name].epoch for name in ds.sources}

    def _check_progress(self, name: str, reason: str) -> None:
        # Two epoch boundaries without one usable document: the source is unusable.
        if self.state.readers[name].epoch > self.last_ok_epoch[name] + 1:
            urls = self.ds.sources[name].urls
            raise DataError(
                f"source {name!r}: no usable sample in a whole pass over {len(urls)} shard(s) "
                f"(last problem: {reason}), e.g. {urls[0]}"
            )

    # ------------------------------------------------------------------ errors
    def _skip(self, reason: str, where: str) -> None:
        if self.strict:
            raise DataError(f"{where}: {reason} (data.strict=true)")
        n = self.state.skipped.get(reason, 0) + 1
        self.state.skipped[reason] = n
        if n <= 3:
            log.warning("skipped a sample (%s, %d so far): %s", reason, n, where)

    def _tar_error(self, exn: Exception) -> bool:
        self._skip("corrupt_tar", str(exn))
        return True

    # -------------------------------------------------------------------- loop
    def _snapshot(self) -> dict[str, Any]:
        st = self.state
        for name, buf in self.buffers.items():
            st.shuffles[name] = buf.draws
        return copy.deepcopy({"readers": st.readers, "shuffles": st.shuffles, "mixer": st.mixer})

    def _state_at(self, snapshots: dict[int, dict[str, Any]]) -> dict[str, Any]:
        """The stream state at the start of the next window (what a resume restores)."""
        point = self.packer.resume_point()
        if point is None:
            snap, offset = self._snapshot(), 0
        else:
            serial, offset = point
            snap = snapshots[serial]
        state = {"stream_id": self.state.stream_id, "doc_offset": offset, "skipped": dict(self.state.skipped)}
        state.update(copy.deepcopy(snap))
        return {
            "stream_id": state["stream_id"],
            "readers": {k: asdict(v) for k, v in state["readers"].items()},
            "shuffles": dict(state["shuffles"]),
            "mixer": asdict(state["mixer"]),
            "doc_offset": state["doc_offset"],
            "skipped": state["skipped"],
        }

    def run(self) -> Iterator[dict[str, Any]]:
        ds, B = self.ds, self.ds.cfg.batch_size
        batch_index = ds.first_batch + self.slot
        produced = 0
        windows: list[Window] = []
        snapshots: dict[int, dict[str, Any]] = {}
        serial = 0
        skip_tokens = self.state.doc_offset  # a resume may start inside a document
        while True:
            step = batch_index // ds.batches_per_step
            snap = self._snapshot()
            name = self._choose(step)
            if name is None:
                break  # validation: every source read once
            try:
                sample = next(self.buffers[name])
            except StopIteration:
                self.exhausted.add(name)
                continue
            where = f"{sample.get('__url__')}: sample {sample.get('__key__')}"
            try:
                doc = self.decoder(sample)
                self.packer.check(doc)
            except SampleSkip as skip:
                self._skip(skip.reason, f"{where}: {skip.detail}")
                skip_tokens = 0
                self._check_progress(name, skip.reason)
                continue
            self.last_ok_epoch[name] = self.state.readers[name].epoch
            serial += 1
            snapshots[serial] = snap
            n_tokens = _doc_tokens(doc)
            is_vision = ds.sources[name].vision
            self.mixer.account(step, 0 if is_vision else n_tokens, n_tokens if is_vision else 0)
            for window in self.packer.add(doc, serial, skip=skip_tokens, vision_source=is_vision):
                windows.append(window)
                if len(windows) == B:
                    yield self._collate(windows, snapshots, batch_index, step)
                    windows = []
                    produced += 1
                    batch_index += self.n_slots
                    step = batch_index // ds.batches_per_step
                    if ds.max_batches is not None and produced >= ds.max_batches:
                        return
            skip_tokens = 0
            # Only documents still holding pending tokens can be a resume point.
            point = self.packer.resume_point()
            first_live = point[0] if point else serial + 1
            for old in [s for s in snapshots if s < first_live]:
                del snapshots[old]
        if windows and not ds.train:
            yield self._collate(windows, snapshots, batch_index, step)

    def _choose(self, step: int) -> str | None:
        if self.ds.train:
            return self.mixer.choose(step)
        remaining = [n for n in sorted(self.buffers) if n not in self.exhausted]
        return remaining[0] if remaining else None

    def _collate(
        self, windows: list[Window], snapshots: dict[int, dict[str, Any]], batch_index: int, step: int
    ) -> dict[str, Any]:
        tokens = torch.stack([w.tokens for w in windows])
        blocks = [b for w in windows for b in w.blocks]
        p = self.ds.cfg.vision.patch_size
        inputs = tokens[:, :-1]
        text = torch.ones_like(inputs, dtype=torch.bool)
        for t in self.ids.non_text:
            text &= inputs != t
        target = self.mixer.target_ratio(step)
        keys = [k for w in windows for k in w.keys]
        stats = BatchStats(
            text_tokens=int(text.sum()),
            image_tokens=int((inputs == self.ids.image).sum()),
            video_tokens=int((inputs == self.ids.video).sum()),
            pad_tokens=int((inputs == self.ids.pad).sum()),
            tokens=int((inputs != self.ids.pad).sum()),
            vision_source_tokens=sum(w.vision_source_tokens for w in windows),
            vision_ratio_target=None if math.isnan(target) else target,
            keys=keys,
        )
        images = [b for b in blocks if b.kind == "image"]
        videos = [b for b in blocks if b.kind == "video"]
        return {
            **_fences(windows),
            "tokens": tokens,
            "loss_mask": loss_mask(tokens, self.ids, torch.stack([w.targets for w in windows])),
            # (B, L) bits of the named subsets (metrics.LOSS_SUBSETS) each target token belongs to
            "loss_subsets": torch.stack([w.marks for w in windows])[:, 1:],
            "input_mask": inputs != self.ids.pad,  # (B, L) real input tokens: what the routers count
            # transformers' kimi_k25 input names: images and video chunks apart, each in order
            "pixel_values": _pixels(images, p),
            "image_grid_thw": _grids(images),
            "pixel_values_videos": _pixels(videos, p),
            "video_grid_thw": _grids(videos),
            "meta": {
                "slot": self.slot,
                "batch_index": batch_index,
                "state": self._state_at(snapshots),
                "keys": keys,
                "stats": stats,
                "skipped": dict(self.state.skipped),
            },
        }


def _fences(windows: list[Window]) -> dict[str, torch.Tensor]:
    """``segment_ids`` and ``positions`` (B, L) of the inputs when a window of the batch is fenced
    (holds a conversation); the others get one segment with plain positions. Nothing otherwise,
    so batches of text alone keep plain causal attention."""
    if all(w.segments is None for w in windows):
        return {}
    L = windows[0].tokens.shape[0] - 1
    plain = torch.arange(L + 1)
    segments = [w.segments if w.segments is not None else torch.zeros_like(plain) for w in windows]
    positions = [w.positions if w.positions is not None else plain for w in windows]
    return {"segment_ids": torch.stack(segments)[:, :-1], "positions": torch.stack(positions)[:, :-1]}


def _pixels(blocks: list[Any], patch: int) -> torch.Tensor:
    return torch.cat([b.pixel_values for b in blocks]) if blocks else torch.zeros(0, 3, patch, patch)


def _grids(blocks: list[Any]) -> torch.Tensor:
    return torch.tensor([b.grid_thw for b in blocks], dtype=torch.long).view(-1, 3)


def _doc_tokens(doc: Any) -> int:
    """Tokens a document adds to the stream (placeholder runs with their markers, and <|endoftext|>)."""
    from kimi_lab.data.vision import VisionBlock

    return 1 + sum(seg.n_tokens + 2 if isinstance(seg, VisionBlock) else len(seg) for seg in doc.segments)


def skip_totals(per_slot: dict[int, dict[str, int]]) -> dict[str, int]:
    totals = dict.fromkeys(SKIP_REASONS, 0)
    for counts in per_slot.values():
        for reason, n in counts.items():
            totals[reason] = totals.get(reason, 0) + n
    return totals
