"""Swarm tasks for phase ``parl``: ``prompts_per_step`` SwarmTasks per training batch.

Training draws tasks through the resumable prompt stream (``kimi_lab.data.prompt_stream``):
a fresh seeded order every epoch, the position (tasks consumed) saved with the checkpoint,
so a resumed run sees the tasks an uninterrupted one would have. Validation plays the first
``eval_tasks`` held-out tasks (the corpus's val world).
"""

from __future__ import annotations

from torch.utils.data import DataLoader

from kimi_lab.data.prompt_stream import PromptDataModule, PromptSource
from kimi_lab.errors import DataError
from kimi_lab.swarm.corpus import Corpus
from kimi_lab.swarm.types import SwarmTask


class SwarmTaskDataModule(PromptDataModule):
    def __init__(self, folder: str, prompts_per_step: int, eval_tasks: int, seed: int = 0) -> None:
        super().__init__(prompts_per_step, seed)
        if not folder:
            raise DataError("phase.parl.tasks is empty: give a folder of kimi-lab data build swarm-tasks")
        self.folder, self.eval_tasks = folder, eval_tasks
        # Filled by setup():
        self.train_tasks: list[SwarmTask] = []
        self.val_tasks: list[SwarmTask] = []
        self.corpus: Corpus | None = None

    def setup(self, stage: str | None = None) -> None:
        from kimi_lab.swarm.search_tasks import load_swarm_tasks

        self.train_tasks, self.corpus = load_swarm_tasks(self.folder, "train")
        self.val_tasks = load_swarm_tasks(self.folder, "val")[0] if self.eval_tasks > 0 else []
        if not self.train_tasks:
            raise DataError(f"{self.folder}: no train swarm tasks")

    def train_sources(self) -> dict[str, PromptSource]:
        return {
            "swarm": PromptSource(
                lambda _rng: list(self.train_tasks), 1.0, f"{self.folder}: no train swarm tasks"
            )
        }

    def val_dataloader(self) -> list[DataLoader]:
        if not self.val_tasks:
            return []
        return [DataLoader(self.val_tasks[: self.eval_tasks], batch_size=8, collate_fn=list)]
