"""Swarm tasks for phase ``parl``: ``prompts_per_step`` SwarmTasks per training batch.

Training draws task indices from a seeded permutation, epoch after epoch; the
position (tasks consumed) travels with the checkpoint, so a resumed run sees the
tasks an uninterrupted one would have. Validation plays the first ``eval_tasks``
held-out tasks (the corpus's val world).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import lightning as L
from torch.utils.data import DataLoader, IterableDataset

from kimi_lab.errors import DataError
from kimi_lab.swarm.corpus import Corpus
from kimi_lab.swarm.types import SwarmTask


class _TaskCycle(IterableDataset):
    def __init__(self, tasks: list[SwarmTask], seed: int, skip: int) -> None:
        self.tasks, self.seed, self.skip = tasks, seed, skip

    def __iter__(self) -> Iterator[SwarmTask]:
        n, i = len(self.tasks), self.skip
        while True:
            epoch, pos = divmod(i, n)
            order = list(range(n))
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
            yield self.tasks[order[pos]]
            i += 1


class SwarmTaskDataModule(L.LightningDataModule):
    def __init__(self, folder: str, prompts_per_step: int, eval_tasks: int, seed: int = 0) -> None:
        super().__init__()
        if not folder:
            raise DataError("phase.parl.tasks is empty: give a folder of kimi-lab data build swarm-tasks")
        self.folder, self.prompts_per_step, self.eval_tasks, self.seed = (
            folder,
            prompts_per_step,
            eval_tasks,
            seed,
        )
        self.tasks_consumed = 0
        # Filled by setup():
        self.train_tasks: list[SwarmTask] = []
        self.val_tasks: list[SwarmTask] = []
        self.corpus: Corpus | None = None

    def setup(self, stage: str | None = None) -> None:
        from kimi_lab.swarm.tasks import load_swarm_tasks

        self.train_tasks, self.corpus = load_swarm_tasks(self.folder, "train")
        self.val_tasks = load_swarm_tasks(self.folder, "val")[0] if self.eval_tasks > 0 else []
        if not self.train_tasks:
            raise DataError(f"{self.folder}: no train swarm tasks")

    def train_dataloader(self) -> DataLoader:
        ds = _TaskCycle(self.train_tasks, self.seed, self.tasks_consumed)
        return DataLoader(ds, batch_size=self.prompts_per_step, collate_fn=list, num_workers=0)

    def val_dataloader(self) -> list[DataLoader]:
        if not self.val_tasks:
            return []
        return [DataLoader(self.val_tasks[: self.eval_tasks], batch_size=8, collate_fn=list)]

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.trainer is not None and self.trainer.training:
            self.tasks_consumed += len(batch)
        return batch

    def transfer_batch_to_device(self, batch: Any, device: Any, dataloader_idx: int) -> Any:
        return batch  # tasks stay on the host

    def state_dict(self) -> dict[str, Any]:
        return {"tasks_consumed": self.tasks_consumed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tasks_consumed = int(state.get("tasks_consumed", 0))
