"""The datamodule every phase trains on: mixed WebDataset sources, resumable position.

Batches are built inside the DataLoader workers (``MixedStream``); this module
records, for every batch the trainer actually consumes, the stream state it
carries, and saves those states in checkpoints. DataLoader workers take turns
(worker i yields batches i, i+N, ...), so on resume the restored states are
rotated to the worker whose turn comes next.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
import torch.distributed as dist
from torch.utils.data import DataLoader

from kimi_lab.config.schema import DataConfig
from kimi_lab.data.shards import read_first_record, resolve_shards
from kimi_lab.data.stats import BatchStats
from kimi_lab.data.stream import MixedStream, SourceSpec, skip_totals
from kimi_lab.data.tokenizer import load_or_train
from kimi_lab.errors import ConfigError, DataError

log = logging.getLogger(__name__)

VISION_MODALITIES = ("image", "video", "interleaved")


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def source_modality(path: str, urls: list[str]) -> str:
    """A source's modality: from its manifest when there is one, else from its first record."""
    manifest = Path(path) / "manifest.json"
    if manifest.is_file():
        try:
            modality = json.loads(manifest.read_text()).get("modality")
        except (OSError, json.JSONDecodeError):
            modality = None
        if modality in ("text", *VISION_MODALITIES):
            return modality
    record = read_first_record(urls)
    return str(record.get("modality", "text")) if record else "text"


class KimiDataModule(L.LightningDataModule):
    def __init__(
        self, cfg: DataConfig, vocab_size: int, seed: int = 0, max_steps: int = 1, batches_per_step: int = 1
    ) -> None:
        super().__init__()
        self.cfg, self.vocab_size, self.seed = cfg, vocab_size, seed
        self.max_steps, self.batches_per_step = max_steps, batches_per_step
        self.train_specs: list[SourceSpec] = []
        self.val_specs: list[SourceSpec] = []
        self.modalities: dict[str, str] = {}
        # Resume bookkeeping: states of the streams for the batches consumed so far.
        self.consumed: dict[int, dict[str, Any]] = {}
        self.batches_consumed = 0
        self.num_slots = max(1, cfg.num_workers)
        self.restored: dict[str, Any] | None = None
        self.latest: BatchStats | None = None  # the batch the trainer consumed last
        self.skipped: dict[int, dict[str, int]] = {}

    # ------------------------------------------------------------------ setup
    @property
    def has_vision(self) -> bool:
        return any(m in VISION_MODALITIES for m in self.modalities.values())

    @property
    def vision_start_step(self) -> int:
        return math.floor(self.cfg.fusion.vision_start * self.max_steps)

    def prepare_data(self) -> None:
        load_or_train(self.cfg.tokenizer, self.vocab_size)  # once, on rank 0

    def setup(self, stage: str | None = None) -> None:
        load_or_train(self.cfg.tokenizer, self.vocab_size)
        _, world = _rank_world()
        self.train_specs, self.val_specs = [], []
        for name, src in self.cfg.sources.items():
            key = f"data.sources.{name}.path"
            urls = resolve_shards(src.path, "train", key, self.cfg.allow_unsafe_urls)
            streams = world * self.num_slots
            if len(urls) < streams:
                raise DataError(
                    f"{key}={src.path}: {len(urls)} train shard(s) for {world} rank(s) x {self.num_slots} "
                    f"worker(s); rebuild with smaller shards or lower data.num_workers"
                )
            modality = source_modality(src.path, urls)
            self.modalities[name] = modality
            vision = modality in VISION_MODALITIES
            self.train_specs.append(SourceSpec(name, urls, src.weight, vision))
            if vision:
                block = self.cfg.vision.max_patches // self.cfg.vision.merge_size**2 + 2
                if block > self.cfg.seq_len:
                    raise ConfigError(
                        f"data.vision.max_patches={self.cfg.vision.max_patches} makes an image up to {block} tokens, "
                        f"more than data.seq_len={self.cfg.seq_len} (source {name} holds {modality})"
                    )
            if Path(src.path).is_dir():
                try:
                    val = resolve_shards(src.path, "val", key, self.cfg.allow_unsafe_urls)
                    self.val_specs.append(SourceSpec(name, val, 1.0, vision))
                except DataError as exn:
                    log.warning("no validation for source %s: %s", name, exn)

    # ------------------------------------------------------------- dataloaders
    def _worker_states(self) -> tuple[dict[int, dict[str, Any]], int]:
        """Restored stream states keyed by the new DataLoader's worker id, and the first batch index."""
        if self.restored is None:
            return {}, 0
        r = self.restored
        rank, world = _rank_world()
        if r.get("world") != world or r.get("slots") != self.num_slots:
            log.warning(
                "data position not restored: saved with %s rank(s) x %s worker(s), now %s x %s",
                r.get("world"),
                r.get("slots"),
                world,
                self.num_slots,
            )
            return {}, 0
        mine = r["ranks"][rank]
        consumed = mine["batches"]
        # Worker i now yields the batch that slot (consumed + i) % N would have yielded next.
        states = {
            i: mine["states"][str((consumed + i) % self.num_slots)]
            for i in range(self.num_slots)
            if str((consumed + i) % self.num_slots) in mine["states"]
        }
        return states, consumed

    def train_dataloader(self) -> DataLoader:
        rank, _ = _rank_world()
        states, first = self._worker_states()
        self.batches_consumed = first
        if states:
            log.info("data position restored: %d batches consumed, %d stream(s)", first, len(states))
        ds = MixedStream(
            self.train_specs,
            self.cfg,
            train=True,
            seed=self.seed,
            rank=rank,
            states=states,
            first_batch=first,
            batches_per_step=self.batches_per_step,
            vision_start_step=self.vision_start_step,
        )
        return self._loader(ds, self.cfg.num_workers)

    def val_dataloader(self) -> list[DataLoader]:
        if self.cfg.val_batches == 0:
            return []
        return [
            self._loader(MixedStream([spec], self.cfg, train=False, max_batches=self.cfg.val_batches), 0)
            for spec in self.val_specs
        ]

    @staticmethod
    def _loader(ds: MixedStream, workers: int) -> DataLoader:
        return DataLoader(ds, batch_size=None, num_workers=workers, persistent_workers=False)

    @property
    def val_names(self) -> list[str]:
        return [s.name for s in self.val_specs]

    # ------------------------------------------------------------ bookkeeping
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        meta = batch.pop("meta", None)
        if meta is None or self.trainer is None or not self.trainer.training:
            return batch
        slot = meta["slot"]
        self.consumed[slot] = meta["state"]
        self.skipped[slot] = meta["skipped"]
        self.batches_consumed = meta["batch_index"] + 1
        self.latest = replace(meta["stats"], skipped=skip_totals(self.skipped))
        return batch

    def state_dict(self) -> dict[str, Any]:
        mine = {"batches": self.batches_consumed, "states": {str(k): v for k, v in self.consumed.items()}}
        _, world = _rank_world()
        if world > 1:
            gathered: list[Any] = [None] * world
            dist.all_gather_object(gathered, mine)
        else:
            gathered = [mine]
        return {"world": world, "slots": self.num_slots, "ranks": gathered}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.restored = state
        rank, _ = _rank_world()
        if rank < len(state.get("ranks", [])):
            self.consumed = {int(k): v for k, v in state["ranks"][rank]["states"].items()}
            self.skipped = {k: dict(v.get("skipped", {})) for k, v in self.consumed.items()}
