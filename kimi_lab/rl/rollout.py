"""Tool-using episodes: the policy writes, the sandbox runs its code, the policy reads and goes on.

An episode starts from a task's prompt conversation (system, user with any images).
Each assistant turn is sampled with the KV cache (``kimi_lab.generation``); its tool
calls run in the sandbox with the task's images and files, and the results (text,
and images the code saved) are appended as tool messages; a turn without a tool
call ends the episode, as does the turn budget. A malformed or unknown tool call
becomes an error observation for the model, never an exception.

The episode keeps its token stream exactly as sampled (turns are appended, never
re-tokenised), with each sampled token's log-probability under the sampling
policy: the loss later re-scores exactly these tokens.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from kimi_lab.chat import ChatEncoder, Message, parse_assistant
from kimi_lab.config.schema import ToolConfig, VisionDataConfig
from kimi_lab.data.tasks import TaskInput
from kimi_lab.data.vision import VisionBlock, blocks_in_order, media_blocks, run_sizes
from kimi_lab.generation import Prompt, generate

log = logging.getLogger(__name__)

TOOL_NAME = "python"


@dataclass
class Episode:
    task: TaskInput
    messages: list[Message]
    tokens: list[int]  # the whole stream: prompt, sampled turns, tool results
    sampled: list[bool]  # True at tokens the policy sampled (the loss's tokens)
    old_logprobs: list[float]  # log pi_old at sampled tokens, 0 elsewhere
    blocks: list[VisionBlock] = field(default_factory=list)
    turns: int = 0
    tool_calls: int = 0
    tool_errors: int = 0
    truncated: bool = False  # a turn ran out of tokens before <|im_end|>
    reward: float = 0.0

    @property
    def n_sampled(self) -> int:
        return sum(self.sampled)

    @property
    def final_text(self) -> str:
        last = next((m for m in reversed(self.messages) if m.role == "assistant"), None)
        return last.content if last else ""


def _png_to_rgb(data: bytes) -> np.ndarray | None:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))
    except Exception:  # a tool's image we cannot read is dropped, not fatal
        return None


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
        self.enc = ChatEncoder(tokenizer)
        self.tok = tokenizer
        self.vision = vision  # None: a text-only model sees images as "<image:NAME>" text
        self.tool = tool
        self.max_new_tokens = max_new_tokens
        self.max_turns = max_turns
        self.max_seq_len = max_seq_len
        self.tool_workers = tool_workers  # sandboxes run at once across a batch's episodes
        if run_tool is None:
            from kimi_lab.tools import run_python

            run_tool = run_python
        self.run_tool = run_tool

    # --------------------------------------------------------------- encoding
    def _append(
        self, ep: Episode, messages: list[Message], images: dict[str, np.ndarray], prompt: bool
    ) -> None:
        vision = self.vision
        blocks = {n: media_blocks(images[n], vision) for m in messages for n in m.images} if vision else {}
        enc = self.enc.encode(
            messages, (lambda n: run_sizes(blocks[n])) if vision else None, add_generation_prompt=prompt
        )
        ep.blocks.extend(blocks_in_order(enc.media, blocks))
        ep.tokens.extend(enc.tokens)
        ep.sampled.extend([False] * len(enc.tokens))
        ep.old_logprobs.extend([0.0] * len(enc.tokens))

    def start(self, task: TaskInput) -> Episode:
        ep = Episode(task, list(task.messages), [], [], [])
        self._append(ep, task.messages, task.images, prompt=True)
        return ep

    # ---------------------------------------------------------------- running
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
        active = list(episodes)
        for _turn in range(self.max_turns):
            if not active:
                break
            room = [self.max_seq_len - len(ep.tokens) for ep in active]
            budget = min(self.max_new_tokens, *room)
            if budget <= 0:
                for ep in active:
                    ep.truncated = True
                break
            gens = generate(
                model,
                [Prompt(ep.tokens, ep.blocks) for ep in active],
                budget,
                self.enc.stop_ids,
                self.tok.pad_id,
                temperature=temperature,
                generator=generator,
                autocast=autocast,
                banned_ids=self.enc.banned_ids,
            )
            pending: list[tuple[Episode, Message, list[str]]] = []
            for ep, gen in zip(active, gens, strict=True):
                ep.turns += 1
                ep.tokens.extend(gen.tokens)
                ep.sampled.extend([True] * len(gen.tokens))
                ep.old_logprobs.extend(gen.logprobs)
                text = self.tok.decode(gen.tokens)
                parsed = parse_assistant(text, gen.finished)
                ep.messages.append(parsed.message)
                if not gen.finished:
                    ep.truncated = True
                    continue
                if parsed.message.tool_calls or parsed.errors:
                    pending.append((ep, parsed.message, parsed.errors))
            active = []
            for ep, results, images in self._run_tools(pending):
                self._append(ep, results, images, prompt=True)
                ep.messages.extend(results)
                active.append(ep)
        return episodes

    def _run_tools(
        self, pending: list[tuple[Episode, Message, list[str]]]
    ) -> list[tuple[Episode, list[Message], dict[str, np.ndarray]]]:
        """Every episode's tool calls of this turn, the episodes side by side: each call is a sandboxed
        process whose start-up is mostly waiting, so a large evaluation batch would otherwise spend
        minutes running them one after another. Results keep the episodes' order."""
        if len(pending) <= 1 or self.tool_workers <= 1:
            return [(ep, *self._tool_messages(ep, msg, errs)) for ep, msg, errs in pending]
        with ThreadPoolExecutor(max_workers=min(self.tool_workers, len(pending))) as pool:
            done = list(pool.map(lambda item: self._tool_messages(*item), pending))
        return [(ep, results, images) for (ep, _, _), (results, images) in zip(pending, done, strict=True)]

    def _tool_messages(
        self, ep: Episode, message: Message, errors: list[str]
    ) -> tuple[list[Message], dict[str, np.ndarray]]:
        """Run one episode's tool calls (in parallel): one tool message each, and the images they saved."""
        out: list[Message] = [Message("tool", f"error: {e}") for e in errors]
        saved: dict[str, np.ndarray] = {}
        ep.tool_errors += len(errors)
        runnable = [c for c in message.tool_calls if c.name == TOOL_NAME]
        for c in message.tool_calls:
            if c.name != TOOL_NAME:
                out.append(Message("tool", f"error: unknown tool {c.name!r} (the only tool is {TOOL_NAME})"))
                ep.tool_errors += 1
        if runnable:
            from kimi_lab.tools import SandboxLimits

            t = self.tool
            limits = SandboxLimits(
                wall_s=t.wall_s, cpu_s=t.cpu_s, memory_mb=t.memory_mb, output_bytes=t.output_bytes
            )
            # The tool gets the images (a clip in the prompt is the model's to watch, not the tool's).
            inputs = [ep.task.images[n] for n in sorted(ep.task.images) if ep.task.images[n].ndim == 3]
            with ThreadPoolExecutor(max_workers=min(4, len(runnable))) as pool:
                results = list(
                    pool.map(lambda c: self.run_tool(c.input, inputs, ep.task.files, limits), runnable)
                )
            for res in results:
                ep.tool_calls += 1
                if res.status != "ok":
                    ep.tool_errors += 1
                msg = Message("tool", res.observation(self.tool.observation_chars))
                for name, png in res.images:
                    arr = _png_to_rgb(png)
                    patch = self.vision.patch_size if self.vision else 1
                    if arr is not None and min(arr.shape[:2]) >= patch:  # at least one vision patch
                        key = f"tool{ep.tool_calls}_{name.rsplit('.', 1)[0]}"
                        saved[key] = arr
                        msg.images.append(key)
                out.append(msg)
        return out, saved
