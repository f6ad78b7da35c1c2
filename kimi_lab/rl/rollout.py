"""Tool-using episodes: the policy writes, the sandbox runs its code, the policy reads and goes on.

An episode starts from a task's prompt conversation (system, user with any images) and is
played turn by turn by ``kimi_lab.decode.tool_turns`` (the turn ``kimi-lab chat`` takes too): each
assistant turn is sampled with the KV cache, its tool calls run in the sandbox with the
task's images and files, and the results (text, and images the code saved) are appended as
tool messages; a turn without a tool call ends the episode, as does the turn budget. The
episode keeps its token stream exactly as sampled, with each sampled token's log-probability
under the sampling policy: the loss later re-scores exactly these tokens.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from kimi_lab.config.schema import ToolConfig, VisionDataConfig
from kimi_lab.data.task_prompts import TaskInput
from kimi_lab.decode.generation import DecodeOptions
from kimi_lab.decode.tool_turns import CodeTool, Dialogue, ToolTurns

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class Episode(Dialogue):
    """One task's dialogue, and its reward once scored."""

    task: TaskInput
    reward: float = 0.0


class RolloutRunner:
    """Runs batches of episodes for one model; the tool runs in the bubblewrap sandbox."""

    def __init__(
        self,
        tokenizer: Any,
        vision: VisionDataConfig | None,
        tool: ToolConfig,
        max_new_tokens: int,
        max_turns: int,
        max_seq_len: int,
        run_tool: Callable[..., Any] | None = None,
        tool_workers: int = 4,
    ) -> None:
        self.max_new_tokens = max_new_tokens
        self.max_turns = max_turns
        code = CodeTool(tool, run_tool, min_image_side=vision.patch_size if vision else 1)
        self.turns = ToolTurns(tokenizer, vision, code, max_seq_len, tool_workers)

    def start(self, task: TaskInput) -> Episode:
        ep = Episode(
            task=task,
            tool_images=[task.images[n] for n in sorted(task.images) if task.images[n].ndim == 3],
            files=task.files,
        )
        self.turns.add(ep, list(task.messages), task.images)
        return ep

    def run(
        self,
        model: torch.nn.Module,
        tasks: list[TaskInput],
        samples_per_task: int = 1,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        autocast: torch.dtype | None = None,
    ) -> list[Episode]:
        """``samples_per_task`` episodes per task (grouped: task 0's first), all turns played out."""
        episodes = [self.start(t) for t in tasks for _ in range(samples_per_task)]
        enc = self.turns.enc
        options = DecodeOptions(
            self.max_new_tokens,
            enc.stop_ids,
            self.turns.tok.pad_id,
            temperature=temperature,
            generator=generator,
            autocast=autocast,
            banned_ids=enc.banned_ids,
        )
        active: list[Any] = list(episodes)
        for _turn in range(self.max_turns):
            if not active:
                break
            active = self.turns.step(model, active, options)
        return episodes
