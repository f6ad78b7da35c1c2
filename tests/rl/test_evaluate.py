"""Evaluation: batched by prompt length, episodes back in the tasks' order, per-prompt records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kimi_lab.chat_format import Message
from kimi_lab.data.task_prompts import TaskInput
from kimi_lab.errors import KimiLabError
from kimi_lab.rl.evaluate import blanked, episode_record, evaluate, evaluate_checkpoint, prompt_size
from kimi_lab.rl.rollout import Episode


def _task(i: int, chars: int, image: bool = False) -> TaskInput:
    images = {"image_0": np.zeros((56, 56, 3), dtype=np.uint8)} if image else {}
    return TaskInput(
        [Message("user", "x" * chars)],
        images,
        {},
        {"id": f"t{i}", "family": "count", "answer": i, "answer_type": "count"},
        "vision" if image else "text",
    )


class FakeRunner:
    """Answers every task with its own number; records the batches it was given."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def run(self, model: Any, tasks: list[TaskInput], k: int, temperature: float) -> list[Episode]:
        self.batches.append([t.task["id"] for t in tasks])
        return [
            Episode(task=t, messages=[*t.messages, Message("assistant", f"Answer: {t.task['answer']}")])
            for t in tasks
        ]


def test_batches_group_prompts_of_similar_length_and_episodes_keep_task_order() -> None:
    sizes = [900, 30, 600, 60, 300, 90]
    tasks = [_task(i, c) for i, c in enumerate(sizes)]
    runner, seen = FakeRunner(), []
    summary, episodes, rewards = evaluate(
        None, runner, tasks, batch_size=2, progress=lambda d, t: seen.append((d, t))
    )  # type: ignore[arg-type]
    # shortest two, middle two, longest two
    assert runner.batches == [["t1", "t3"], ["t5", "t4"], ["t2", "t0"]]
    assert [ep.task.task["id"] for ep in episodes] == [f"t{i}" for i in range(6)]
    assert rewards == [1.0] * 6 and summary["source/text"]["n"] == 6
    assert seen == [(2, 6), (4, 6), (6, 6)]
    rec = episode_record(episodes[2], rewards[2])
    assert rec["id"] == "t2" and rec["source"] == "text" and rec["reward"] == 1.0


def test_prompt_size_counts_image_tokens() -> None:
    assert prompt_size(_task(0, 300)) == 100
    assert prompt_size(_task(0, 300, image=True)) == 100 + 4  # 56 x 56 pixels: 4 merged tokens


def test_too_few_held_out_prompts_is_an_error_when_n_is_required(task_shards: Path) -> None:
    with pytest.raises(KimiLabError, match="usable val prompts, 500 needed"):
        evaluate_checkpoint("no-such.ckpt", {"vision": str(task_shards)}, 500, require_n=True)


def test_blanked_images_keep_size_and_background_only() -> None:
    task = _task(0, 10, image=True)
    task.images["image_0"][:, :] = (255, 255, 255)
    task.images["image_0"][10:20, 10:20] = (200, 0, 0)  # a red square on white
    blank = blanked(task).images["image_0"]
    assert blank.shape == (56, 56, 3) and blank.dtype == np.uint8
    assert (blank == 255).all() and (task.images["image_0"][10, 10] == (200, 0, 0)).all()
