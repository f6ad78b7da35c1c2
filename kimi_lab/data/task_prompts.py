"""Task prompts for RL and evaluation: shards of ``kimi-lab data build visual-tasks`` -> TaskInput.

A task sample is a chat record whose ``messages`` are the prompt (system, user with
images), with ``task`` (family, answer, answer_type, id) for the scorer and
``files`` for the tool. Training draws prompts from several sources by weight through
the resumable prompt stream (``data.prompt_stream``), each source's shards in a fresh
seeded order every epoch. Evaluation reads the first N prompts of each source's val
split, in order.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, IterableDataset

from kimi_lab.chat_format import ChatFormatError, Message
from kimi_lab.config.schema import source_config
from kimi_lab.data.decode import SampleSkip, decode_image, decode_media, parse_record
from kimi_lab.data.prompt_stream import PromptDataModule, PromptSource
from kimi_lab.data.shards import iter_shard_samples, resolve_shards
from kimi_lab.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class TaskInput:
    """One prompt: its conversation, the media it names, files for the tool, and the task record."""

    messages: list[Message]
    images: dict[str, np.ndarray]  # name -> uint8 RGB (H, W, 3), or a clip (T, H, W, 3)
    files: dict[str, str]
    task: dict[str, Any]  # family, answer, answer_type, id (and whatever the scorer needs)
    source: str = "tasks"
    # What a code-from-pixels answer's render is compared with (``target_N.png``: a recording's
    # frames at the task's times); empty: the prompt's images are the target.
    targets: list[np.ndarray] = field(default_factory=list)


def task_from_sample(sample: dict[str, Any], source: str) -> TaskInput:
    """One shard sample -> TaskInput (raises SampleSkip with a reason when it is unusable)."""
    record = parse_record(sample)
    if record.get("modality") != "chat" or not isinstance(record.get("task"), dict):
        raise SampleSkip("bad_json", "not a task sample (needs modality chat and a task object)")
    try:
        messages = [Message.from_dict(m) for m in record.get("messages") or []]
    except ChatFormatError as exn:
        raise SampleSkip("bad_json", str(exn)) from None
    if not messages or messages[-1].role != "user":
        raise SampleSkip("bad_json", "a task prompt must end with the user's message")
    images = {name: decode_media(sample, name) for name in [n for m in messages for n in m.images]}
    files = record.get("files") or {}
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise SampleSkip("bad_json", "files must map names to text")
    task = dict(record["task"])
    task.setdefault("id", str(sample.get("__key__")))
    targets = []
    while isinstance(sample.get(f"target_{len(targets)}.png"), bytes):
        targets.append(decode_image(sample[f"target_{len(targets)}.png"]))
    return TaskInput(messages, images, dict(files), task, source, targets)


def _samples(urls: list[str], source: str, counts: dict[str, int]) -> Iterator[TaskInput]:
    def on_error(exn: Exception) -> bool:
        counts["corrupt_tar"] = counts.get("corrupt_tar", 0) + 1
        log.warning("task source %s: %s", source, exn)
        return True

    for sample in iter_shard_samples(iter(urls), on_error):
        try:
            yield task_from_sample(sample, source)
        except SampleSkip as skip:
            counts[skip.reason] = counts.get(skip.reason, 0) + 1
            if counts[skip.reason] <= 3:
                log.warning("skipped task %s in %s: %s", sample.get("__key__"), source, skip)


class EvalTasks(IterableDataset):
    """The first ``limit`` prompts of one source's val split (train split when it has none)."""

    def __init__(self, name: str, urls: list[str], limit: int) -> None:
        super().__init__()
        self.name, self.urls, self.limit = name, urls, limit

    def __iter__(self) -> Iterator[TaskInput]:
        for i, task in enumerate(_samples(self.urls, self.name, {})):
            if i >= self.limit:
                return
            yield task


def task_urls(name: str, path: str, split: str) -> list[str]:
    key = f"phase.rl.tasks.{name}.path"
    try:
        return resolve_shards(path, split, key)
    except DataError:
        if split == "val":
            return resolve_shards(path, "train", key)
        raise


class TaskDataModule(PromptDataModule):
    """Prompts for phase rl: ``prompts_per_step`` TaskInputs per batch (a plain list)."""

    def __init__(
        self, tasks: dict[str, Any], prompts_per_step: int, eval_prompts: int, seed: int = 0
    ) -> None:
        super().__init__(prompts_per_step, seed)
        if not tasks:
            raise DataError(
                "phase.rl.tasks is empty: name at least one folder of kimi-lab data build visual-tasks"
            )
        self.specs = {name: source_config(name, v) for name, v in tasks.items()}
        self.eval_prompts = eval_prompts
        self.skipped: dict[str, int] = {}  # training prompts skipped, by reason
        # Filled by setup() (shard listing is I/O, done once per process):
        self.train_urls: dict[str, list[str]] = {}
        self.val_sources: dict[str, list[str]] = {}
        self.val_names: list[str] = []

    def setup(self, stage: str | None = None) -> None:
        self.train_urls = {n: task_urls(n, s.path, "train") for n, s in self.specs.items()}
        self.val_sources = {n: task_urls(n, s.path, "val") for n, s in self.specs.items()}
        self.val_names = sorted(self.val_sources)

    def train_sources(self) -> dict[str, PromptSource]:
        def epoch(name: str, urls: list[str]) -> Callable[[random.Random], list[TaskInput]]:
            def items(rng: random.Random) -> list[TaskInput]:
                order = list(urls)
                rng.shuffle(order)  # the shards in a fresh order every epoch
                return list(_samples(order, name, self.skipped))

            return items

        return {
            name: PromptSource(
                epoch(name, urls),
                self.specs[name].weight,
                f"phase.rl.tasks.{name}: no usable task in {len(urls)} shard(s), e.g. {urls[0]}",
            )
            for name, urls in self.train_urls.items()
        }

    def val_dataloader(self) -> list[DataLoader]:
        if self.eval_prompts <= 0:
            return []
        return [
            DataLoader(EvalTasks(n, self.val_sources[n], self.eval_prompts), batch_size=8, collate_fn=list)
            for n in self.val_names
        ]
