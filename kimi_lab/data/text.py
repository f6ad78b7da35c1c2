"""Text pre-training data: WebDataset shards -> tokens -> packed fixed-length windows.

Documents are tokenized, each followed by ``<|endoftext|>``, and concatenated into
one stream that is cut into windows of ``seq_len + 1`` tokens (inputs and their
next-token labels), so no token is padding. Training reads shards resampled
forever (every rank and worker its own shuffled order: no epoch-end hangs under
DDP); validation reads the val shards in order, the same windows every time.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from kimi_lab.config.schema import DataConfig
from kimi_lab.data.shards import SkipCounter, iter_shard_samples, resolve_shards
from kimi_lab.data.tokenizer import Tokenizer, load_or_train
from kimi_lab.errors import DataError

log = logging.getLogger(__name__)


def _rank_and_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _shuffled(items: Iterator[dict], buffer: int, rng: random.Random) -> Iterator[dict]:
    pool: list[dict] = []
    for item in items:
        if len(pool) < buffer:
            pool.append(item)
            continue
        i = rng.randrange(len(pool))
        pool[i], item = item, pool[i]
        yield item
    rng.shuffle(pool)
    yield from pool


class PackedTextStream(IterableDataset):
    def __init__(
        self,
        urls: list[str],
        tokenizer_path: str,
        seq_len: int,
        *,
        train: bool,
        seed: int = 0,
        shuffle_buffer: int = 0,
        max_windows: int | None = None,
        start_step: int = 0,
    ) -> None:
        super().__init__()
        self.urls, self.tokenizer_path, self.seq_len = urls, tokenizer_path, seq_len
        self.train, self.seed, self.shuffle_buffer = train, seed, shuffle_buffer
        self.max_windows, self.start_step = max_windows, start_step
        self.skipped = SkipCounter()
        self._seen = 0

    def _shard_stream(self, rng: random.Random) -> Iterator[str]:
        if not self.train:  # every rank reads the same val shards once, in order
            yield from self.urls
            return
        while True:
            seen_before = self._seen
            order = list(self.urls)
            rng.shuffle(order)
            yield from order
            if self._seen == seen_before:
                raise DataError(
                    f"no readable text samples in any of {len(self.urls)} shard(s), e.g. {self.urls[0]}"
                )

    def _counted(self, samples: Iterator[dict]) -> Iterator[dict]:
        # Counted where shards are read (before the shuffle buffer), so a pass over
        # shards without a single text sample is noticed at the end of that pass.
        for sample in samples:
            if isinstance(sample.get("txt"), bytes):
                self._seen += 1
            yield sample

    def __iter__(self) -> Iterator[torch.Tensor]:
        worker = get_worker_info()
        worker_id, n_workers = (worker.id, worker.num_workers) if worker else (0, 1)
        if worker is not None:
            torch.set_num_threads(1)  # the trainer owns the cores
        rank, _ = _rank_and_world()
        stream_id = rank * n_workers + worker_id
        # A resumed run starts a fresh order instead of replaying the first windows.
        rng = random.Random(f"{self.seed}/{stream_id}/{self.start_step}")
        tok = Tokenizer(self.tokenizer_path)
        samples = self._counted(iter_shard_samples(self._shard_stream(rng), self.skipped))
        if self.train and self.shuffle_buffer > 1:
            samples = _shuffled(samples, self.shuffle_buffer, rng)
        window = self.seq_len + 1
        buf: list[int] = []
        produced = 0
        for sample in samples:
            raw = sample.get("txt")
            if not isinstance(raw, bytes):
                self.skipped(
                    DataError(f"{sample.get('__url__')}: sample {sample.get('__key__')} has no .txt")
                )
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exn:
                self.skipped(DataError(f"{sample.get('__url__')}: sample {sample.get('__key__')}: {exn}"))
                continue
            buf.extend(tok.encode(text))
            buf.append(tok.eos_id)
            while len(buf) >= window:
                yield torch.tensor(buf[:window], dtype=torch.long)
                del buf[: self.seq_len]  # the last label becomes the next window's first input
                produced += 1
                if self.max_windows is not None and produced >= self.max_windows:
                    return


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def _collate(rows: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"tokens": torch.stack(rows)}


class TextDataModule(L.LightningDataModule):
    """Batches of {"tokens": LongTensor (B, seq_len + 1)}."""

    def __init__(self, cfg: DataConfig, vocab_size: int, seed: int = 0) -> None:
        super().__init__()
        self.cfg, self.vocab_size, self.seed = cfg, vocab_size, seed
        self.train_urls: list[str] = []
        self.val_urls: list[str] = []

    def prepare_data(self) -> None:
        load_or_train(self.cfg.tokenizer, self.vocab_size)  # once, on rank 0

    def setup(self, stage: str | None = None) -> None:
        load_or_train(self.cfg.tokenizer, self.vocab_size)
        self.train_urls = resolve_shards(self.cfg.path, "train")
        self.val_urls = []
        if Path(self.cfg.path).is_dir():
            try:
                self.val_urls = resolve_shards(self.cfg.path, "val")
            except DataError as exn:
                log.warning("no validation: %s", exn)

    def _loader(self, dataset: PackedTextStream, workers: int) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.cfg.batch_size,
            num_workers=workers,
            worker_init_fn=_worker_init if workers else None,
            collate_fn=_collate,
            persistent_workers=False,
        )

    def train_dataloader(self) -> DataLoader:
        start = self.trainer.global_step if self.trainer is not None else 0
        if start:
            log.info("training stream reseeded for step %d (resumed run)", start)
        ds = PackedTextStream(
            self.train_urls,
            self.cfg.tokenizer,
            self.cfg.seq_len,
            train=True,
            seed=self.seed,
            shuffle_buffer=self.cfg.shuffle_buffer,
            start_step=start,
        )
        return self._loader(ds, self.cfg.num_workers)

    def val_dataloader(self) -> DataLoader | list:
        if not self.val_urls or self.cfg.val_batches == 0:
            return []
        ds = PackedTextStream(
            self.val_urls,
            self.cfg.tokenizer,
            self.cfg.seq_len,
            train=False,
            max_windows=self.cfg.val_batches * self.cfg.batch_size,
        )
        return self._loader(ds, 0)
