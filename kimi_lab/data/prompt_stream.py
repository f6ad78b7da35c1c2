"""The prompts of the RL phases, endless and resumable: RL's task prompts, PARL's swarm tasks.

Prompts are drawn from one or more sources by weight, forever; each source goes through
its prompts in a fresh seeded order every epoch. The position is the number of prompts
drawn, counted by the datamodule and saved in its checkpoint state: a resumed run draws
the same sequence again and skips what was consumed, so it sees the prompts an
uninterrupted run would have (skipping costs a re-read of what was consumed, which is cheap).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import lightning as L
from torch.utils.data import DataLoader, IterableDataset

from kimi_lab.errors import DataError


@dataclass
class PromptSource:
    """One source: its prompts for an epoch, read in the order the epoch's seeded ``Random``
    gives (``items(rng)``: a source of shards lists them in that order), and its weight."""

    items: Callable[[random.Random], list[Any]]
    weight: float = 1.0
    empty: str = "no usable prompt"  # the error when an epoch finds nothing


class PromptStream(IterableDataset):
    """Prompts from ``sources``, mixed by weight, endless; the first ``skip`` are not yielded."""

    def __init__(self, sources: dict[str, PromptSource], seed: int, skip: int = 0) -> None:
        super().__init__()
        self.sources, self.seed, self.skip = sources, seed, skip

    def _endless(self, name: str) -> Iterator[Any]:
        source, epoch = self.sources[name], 0
        while True:
            items = source.items(random.Random(f"{self.seed}/{name}/{epoch}"))
            if not items:
                raise DataError(source.empty)
            random.Random(f"{self.seed}/{name}/{epoch}/items").shuffle(items)
            yield from items
            epoch += 1

    def __iter__(self) -> Iterator[Any]:
        names = sorted(self.sources)
        weights = [self.sources[n].weight for n in names]
        streams = {n: self._endless(n) for n in names}
        rng = random.Random(f"{self.seed}/mix")
        for drawn in itertools.count(1):
            item = next(streams[rng.choices(names, weights)[0]])
            if drawn > self.skip:
                yield item


class PromptDataModule(L.LightningDataModule):
    """Prompts for a phase that samples its own answers: ``prompts_per_step`` per batch (a plain
    list, left on the host), from ``train_sources()``; the count of prompts consumed travels
    with the checkpoint. Subclasses list the sources and give the validation loaders."""

    def __init__(self, prompts_per_step: int, seed: int = 0) -> None:
        super().__init__()
        self.prompts_per_step, self.seed = prompts_per_step, seed
        self.prompts_consumed = 0

    def train_sources(self) -> dict[str, PromptSource]:
        raise NotImplementedError

    def train_dataloader(self) -> DataLoader:
        ds = PromptStream(self.train_sources(), self.seed, skip=self.prompts_consumed)
        return DataLoader(ds, batch_size=self.prompts_per_step, collate_fn=list, num_workers=0)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.trainer is not None and self.trainer.training:
            self.prompts_consumed += len(batch)
        return batch

    def transfer_batch_to_device(self, batch: Any, device: Any, dataloader_idx: int) -> Any:
        return batch  # prompts stay on the host; rollouts move what they need

    def state_dict(self) -> dict[str, Any]:
        return {"prompts_consumed": self.prompts_consumed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # "tasks_consumed": what PARL checkpoints written before this module called it
        self.prompts_consumed = int(state.get("prompts_consumed", state.get("tasks_consumed", 0)))
