"""What the swarm runtime, its tasks and its policies share.

A *step* is one assistant turn of one agent (one policy call). An agent acts by
writing tool calls in the chat format of ``kimi_lab.chat_format``; multi-argument tools
take a JSON object as their input (``assign_task`` ``{"agent": "a1", "prompt":
"..."}``), single-argument tools the argument itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from kimi_lab.chat_format import Message, ToolSpec  # ToolSpec: as the chat format renders it (render_tools)


class Environment(Protocol):
    """A task's own tools (search, open, ...), shared by every agent of an episode."""

    tools: list[ToolSpec]

    def call(self, name: str, tool_input: str) -> str:
        """The observation text; a bad call returns an error text, never raises."""
        ...


@dataclass
class Turn:
    """One policy call's result: the assistant message, and for a trainable policy what it sampled."""

    message: Message
    tokens: list[int] = field(default_factory=list)  # the sampled tokens (trainable policies)
    logprobs: list[float] = field(default_factory=list)  # log pi_old of each
    prompt_tokens: list[int] = field(default_factory=list)  # the context they were sampled after
    finished: bool = True  # ended with <|im_end|>; False: cut by the token budget
    errors: list[str] = field(default_factory=list)  # malformed tool calls (become tool errors)


class Policy(Protocol):
    """Anything that writes an agent's next turn: a checkpoint, a scripted baseline, a served model."""

    name: str

    async def act(self, messages: list[Message], tools: list[ToolSpec], role: str) -> Turn:
        """``role`` is "orchestrator" or "subagent" (scripted policies act differently per role)."""
        ...


@dataclass
class SwarmTask:
    """A wide- or deep-search task over a local corpus."""

    id: str
    kind: str  # "wide" | "deep"
    question: str
    answer: list[str]  # the expected items (wide: one per sub-question; deep: usually one)
    width: int  # independent sub-tasks a good decomposition can run in parallel
    data: dict[str, Any] = field(default_factory=dict)  # what scripted policies and the environment need
