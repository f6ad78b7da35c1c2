"""``EpisodeResult``: what one swarm episode did, counted in steps (K2.5's critical steps).

The runtime fills it; readers tabulate it through ``kimi_lab.swarm.summary.EpisodeSummary``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kimi_lab.chat_format import Message
from kimi_lab.swarm.types import Turn


@dataclass(repr=False)
class EpisodeResult:
    task_id: str
    final_text: str = ""  # the orchestrator's final turn ("" when it never gave one)
    # what is scored: the final turn, its index answer rendered to the task's NAME: VALUE form
    answer_text: str = ""
    answer: str | None = None  # answer_text's Answer: line
    finished: bool = False  # the orchestrator ended the episode itself
    critical_steps: int = 0
    budget: int = 0  # the critical-step budget the episode ran under
    total_steps: int = 0  # every agent's steps
    orchestrator_steps: int = 0  # its turns
    own_steps: int = 0  # look-ups it did itself (``solve``, the index language)
    subagent_steps: int = 0
    subagents_spawned: int = 0
    assignments: int = 0  # sub-agent runs launched
    completed_assignments: int = 0  # ... that returned a result (not an error)
    stages: int = 0
    stage_widths: list[int] = field(default_factory=list)  # assignments per stage
    stage_steps: list[int] = field(default_factory=list)  # the most sub-agent steps per stage
    items_assigned: list[int] = field(default_factory=list)  # items (0-based) given to a lane (index)
    parallelism: float = 0.0  # mean assignments per stage
    max_parallelism: int = 0
    tool_calls: int = 0  # environment tool calls, all agents
    errors: int = 0  # error observations, all agents, and orchestrator faults
    budget_exceeded: str | None = None  # "orchestrator_steps" | "critical_steps" | "time"
    failure: str | None = None  # the orchestrator's policy failed (raised, timed out, garbage)
    truncated: bool = False  # the orchestrator's last turn was cut by its token budget
    truncated_turns: int = 0  # turns cut by a token budget, every agent's
    wall_s: float = 0.0
    reward: dict[str, float] | None = None
    # For training the orchestrator: its turns (tokens, logprobs for trainable policies) and
    # the messages each was sampled after. Sub-agents' turns are observations, never kept.
    orchestrator_turns: list[Turn] = field(default_factory=list)
    orchestrator_contexts: list[list[Message]] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)  # the orchestrator's whole conversation

    def __repr__(self) -> str:
        # short: asyncio formats a finished task's result into some messages, and a
        # swarm's full conversation can be megabytes
        keys = ("task_id", "answer", "critical_steps", "total_steps", "stages", "budget_exceeded", "failure")
        return "EpisodeResult(" + ", ".join(f"{k}={getattr(self, k)!r}" for k in keys) + ")"
