"""One assistant turn with tools, the same in RL rollouts, evaluation and ``kimi-lab chat``.

A ``Dialogue`` is a conversation kept as the token stream the model reads: messages are
encoded when they are added, each sampled turn is appended exactly as sampled (never
re-tokenised) with each token's log-probability under the sampling policy, which RL's loss
re-scores. ``ToolTurns.step`` takes one turn of many dialogues at once: it samples the next
assistant turn of each in one batch (``kimi_lab.decode.generation``, the one decode path), parses it
(``chat.parse_assistant``), runs its tool calls in the sandbox (``CodeTool``), and appends the
tool messages, with the images the code saved, and the next turn's header. A malformed or
unknown call becomes an error the model reads, never an exception. ``kimi-lab serve`` samples
through the same decode path and returns the calls to its client, which runs them.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from kimi_lab.chat_format import IM_END, ChatEncoder, Message, ParsedAssistant, parse_assistant
from kimi_lab.config.schema import ToolConfig, VisionDataConfig
from kimi_lab.data.vision import VisionBlock, blocks_in_order, media_blocks, run_sizes
from kimi_lab.decode.generation import DecodeOptions, Prompt, Step, generate

if TYPE_CHECKING:
    from kimi_lab.tools import SandboxLimits

TOOL_NAME = "python"


def sandbox_limits(cfg: ToolConfig) -> SandboxLimits:
    """The sandbox's limits for a call of the tool ``cfg`` configures."""
    from kimi_lab.tools import SandboxLimits

    return SandboxLimits(
        wall_s=cfg.wall_s, cpu_s=cfg.cpu_s, memory_mb=cfg.memory_mb, output_bytes=cfg.output_bytes
    )


def _png_to_rgb(data: bytes) -> np.ndarray | None:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))
    except Exception:  # a tool's image we cannot read is dropped, not fatal
        return None


@dataclass
class ToolResults:
    """What one assistant turn's tool calls gave back."""

    messages: list[Message]  # one per malformed call, then one per call, in the calls' order
    images: dict[str, np.ndarray]  # the images the code saved, by the name their message gives them
    calls: int  # python calls run
    errors: int  # malformed, unknown and failed calls


class CodeTool:
    """The sandboxed ``python`` tool, as every loop that lets a model use it runs it.

    ``run_tool(code, images, files, limits)`` is ``kimi_lab.tools.run_python`` unless given (tests
    pass a stand-in). Saved images smaller than ``min_image_side`` (a vision patch) are dropped."""

    def __init__(
        self, cfg: ToolConfig, run_tool: Callable[..., Any] | None = None, min_image_side: int = 1
    ) -> None:
        if run_tool is None:
            from kimi_lab.tools import run_python

            run_tool = run_python
        self.cfg, self.run_tool, self.min_image_side = cfg, run_tool, min_image_side
        self.limits = sandbox_limits(cfg)

    def answer(
        self,
        message: Message,
        errors: list[str],
        images: list[np.ndarray],
        files: dict[str, str],
        calls_before: int = 0,
    ) -> ToolResults:
        """Run ``message``'s calls (side by side) with ``images`` and ``files`` in the sandbox;
        ``errors`` are the turn's malformed calls. ``calls_before``: calls the conversation made
        earlier, so saved images get names no earlier one has (``tool3_plot``)."""
        runnable = [c for c in message.tool_calls if c.name == TOOL_NAME]
        results: list[Any] = []
        if runnable:
            with ThreadPoolExecutor(max_workers=min(4, len(runnable))) as pool:
                results = list(
                    pool.map(lambda c: self.run_tool(c.input, images, files, self.limits), runnable)
                )
        out = [Message("tool", f"error: {e}") for e in errors]
        saved: dict[str, np.ndarray] = {}
        n_errors, calls, ran = len(errors), 0, iter(results)
        for c in message.tool_calls:
            if c.name != TOOL_NAME:
                out.append(Message("tool", f"error: unknown tool {c.name!r} (the only tool is {TOOL_NAME})"))
                n_errors += 1
                continue
            res = next(ran)
            calls += 1
            n_errors += res.status != "ok"
            msg = Message("tool", res.observation(self.cfg.observation_chars))
            for name, png in res.images:
                rgb = _png_to_rgb(png)
                if rgb is not None and min(rgb.shape[:2]) >= self.min_image_side:
                    key = f"tool{calls_before + calls}_{name.rsplit('.', 1)[0]}"
                    saved[key] = rgb
                    msg.images.append(key)
            out.append(msg)
        return ToolResults(out, saved, calls, n_errors)


@dataclass
class Dialogue:
    """A conversation as the model reads it: its messages and its exact token stream."""

    messages: list[Message] = field(default_factory=list)
    images: dict[str, np.ndarray] = field(default_factory=dict)  # every image the messages name
    tool_images: list[np.ndarray] = field(default_factory=list)  # what the sandbox gets as ``images``
    files: dict[str, str] = field(default_factory=dict)  # what the sandbox gets in its working dir
    tokens: list[int] = field(default_factory=list)  # the whole stream: prompts, sampled turns, tool results
    sampled: list[bool] = field(default_factory=list)  # True at tokens the policy sampled (the loss's tokens)
    old_logprobs: list[float] = field(default_factory=list)  # log pi_old at sampled tokens, 0 elsewhere
    blocks: list[VisionBlock] = field(default_factory=list)  # in the order of their placeholder runs
    turns: int = 0
    tool_calls: int = 0
    tool_errors: int = 0
    truncated: bool = False  # a turn ran out of tokens (or of context) before <|im_end|>
    last: ParsedAssistant | None = None  # the latest turn, parsed

    @property
    def n_sampled(self) -> int:
        return sum(self.sampled)

    @property
    def final_text(self) -> str:
        last = next((m for m in reversed(self.messages) if m.role == "assistant"), None)
        return last.content if last else ""


class ToolTurns:
    """Adds messages to dialogues and plays their turns; the model is passed to ``step``.

    ``vision`` is the image preprocessing of a ``-vl`` model (None: a text-only model sees
    images as ``<image:NAME>`` text)."""

    def __init__(
        self,
        tokenizer: Any,
        vision: VisionDataConfig | None,
        tool: CodeTool,
        max_seq_len: int,
        tool_workers: int = 4,
    ) -> None:
        self.tok, self.enc = tokenizer, ChatEncoder(tokenizer)
        self.vision, self.tool, self.max_seq_len = vision, tool, max_seq_len
        self.tool_workers = tool_workers  # sandboxes run at once across a batch's dialogues

    def add(
        self,
        d: Dialogue,
        messages: list[Message],
        images: dict[str, np.ndarray] | None = None,
        prompt: bool = True,
    ) -> None:
        """Append ``messages`` (and the images they name) to ``d``'s stream, then the next
        assistant header when ``prompt``. A turn the budget cut is closed first."""
        if d.last is not None and not d.last.finished:
            self._extend(d, [self.enc.ids[IM_END]])
            d.last = replace(d.last, finished=True)
        d.images.update(images or {})
        vision = self.vision
        # an image is one block, a clip (a recording in the prompt) one block per chunk of frames
        blocks = {n: media_blocks(d.images[n], vision) for m in messages for n in m.images} if vision else {}
        enc = self.enc.encode(
            messages, (lambda n: run_sizes(blocks[n])) if vision else None, add_generation_prompt=prompt
        )
        d.blocks.extend(blocks_in_order(enc.media, blocks))
        self._extend(d, enc.tokens)
        d.messages.extend(messages)

    @staticmethod
    def _extend(d: Dialogue, tokens: list[int]) -> None:
        d.tokens.extend(tokens)
        d.sampled.extend([False] * len(tokens))
        d.old_logprobs.extend([0.0] * len(tokens))

    def step(
        self,
        model: torch.nn.Module,
        dialogues: list[Dialogue],
        options: DecodeOptions,
        run_tools: bool = True,
        on_token: Callable[[Step], bool | None] | None = None,
    ) -> list[Dialogue]:
        """One assistant turn of every dialogue, sampled as one batch within ``options``' budget
        (and the context left); with ``run_tools``, each turn's tool calls are run and answered.
        Returns the dialogues that called tools and got their answers: those go on."""
        budget = min(options.max_new_tokens, *(self.max_seq_len - len(d.tokens) for d in dialogues))
        if budget <= 0:
            for d in dialogues:
                d.truncated = True
            return []
        gens = generate(
            model,
            [Prompt(d.tokens, d.blocks) for d in dialogues],
            replace(options, max_new_tokens=budget),
            on_token=on_token,
        )
        pending: list[tuple[Dialogue, ParsedAssistant]] = []
        for d, gen in zip(dialogues, gens, strict=True):
            d.turns += 1
            d.tokens.extend(gen.tokens)
            d.sampled.extend([True] * len(gen.tokens))
            d.old_logprobs.extend(gen.logprobs)
            d.last = parse_assistant(self.tok.decode(gen.tokens), gen.finished)
            d.messages.append(d.last.message)
            if not gen.finished:
                d.truncated = True
            elif run_tools and (d.last.message.tool_calls or d.last.errors):
                pending.append((d, d.last))
        for d, results in self._answer(pending):
            d.tool_calls += results.calls
            d.tool_errors += results.errors
            self.add(d, results.messages, results.images)
        return [d for d, _ in pending]

    def _answer(self, pending: list[tuple[Dialogue, ParsedAssistant]]) -> list[tuple[Dialogue, ToolResults]]:
        """Every dialogue's tool calls of this turn, the dialogues side by side: each call is a
        sandboxed process whose start-up is mostly waiting, so a large evaluation batch would
        otherwise spend minutes running them one after another. Results keep the order."""

        def answer(item: tuple[Dialogue, ParsedAssistant]) -> ToolResults:
            d, parsed = item
            return self.tool.answer(parsed.message, parsed.errors, d.tool_images, d.files, d.tool_calls)

        if len(pending) <= 1 or self.tool_workers <= 1:
            return [(d, answer((d, p))) for d, p in pending]
        with ThreadPoolExecutor(max_workers=min(self.tool_workers, len(pending))) as pool:
            return list(zip([d for d, _ in pending], pool.map(answer, pending), strict=True))
