"""``EpisodeSummary``: one swarm episode as every reader tabulates it, and means with standard errors.

PARL's training metrics, its validation, ``kimi-lab swarm run``'s episode rows and the
PARL ablation's evaluations all read episodes through this one record, so a number
means the same wherever it appears (``score`` is r_perf: 0 past the budget, from
``reward.perf_score``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any

from kimi_lab.swarm.prompts import ASSIGN_TASK
from kimi_lab.swarm.result import EpisodeResult
from kimi_lab.swarm.reward import perf_score
from kimi_lab.swarm.types import SwarmTask

# The fields that are means over episodes (shares are means of 0/1)
MEAN_FIELDS = (
    "score",
    "items_assigned",
    "critical_steps",
    "total_steps",
    "subagents",
    "assignments",
    "excess_subagents",
    "parallelism",
    "finish",
    "delegated",
    "over_budget",
    "truncated_turns",
)


@dataclass(frozen=True)
class EpisodeSummary:
    task: str
    kind: str
    width: int
    score: float  # r_perf: the task's score, 0 when the episode ran over a budget
    critical_steps: int
    budget: int
    total_steps: int
    subagents: int  # sub-agents created
    assignments: int  # sub-agent assignments launched
    excess_subagents: int  # sub-agents beyond the task's width (spurious parallelism)
    parallelism: float  # mean assignments per stage
    finish: float  # share of assignments that returned a result (0 without any)
    delegated: bool  # assigned any work (False: the orchestrator worked alone)
    over_budget: bool
    truncated_turns: int  # turns cut by a token budget
    items_assigned: float  # share of the task's items some lane was given
    errors: int
    failure: str | None
    answer: str | None  # the scored answer (the index language's rendered to NAME: VALUE)
    reward: dict[str, float] | None  # the episode's reward components, when it was rewarded

    @classmethod
    def of(cls, task: SwarmTask, res: EpisodeResult) -> EpisodeSummary:
        return cls(
            task=task.id,
            kind=task.kind,
            width=task.width,
            score=perf_score(task, res),
            critical_steps=res.critical_steps,
            budget=res.budget,
            total_steps=res.total_steps,
            subagents=res.subagents_spawned,
            assignments=res.assignments,
            excess_subagents=max(0, res.subagents_spawned - task.width),
            parallelism=res.parallelism,
            finish=res.completed_assignments / res.assignments if res.assignments else 0.0,
            delegated=res.assignments > 0,
            over_budget=res.budget_exceeded is not None,
            truncated_turns=res.truncated_turns,
            items_assigned=items_assigned(task, res),
            errors=res.errors,
            failure=res.failure,
            answer=res.answer,
            reward=res.reward,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def items_assigned(task: SwarmTask, res: EpisodeResult) -> float:
    """Share of the task's items some lane was given: in the index language the items its calls named;
    in free text the items whose name an assignment's prompt spelled out (0 when it never delegated)."""
    subtasks = task.data.get("subtasks", [])
    n = max(1, len(subtasks))
    if res.items_assigned:
        return len(set(res.items_assigned)) / n
    prompts = []
    for m in res.messages:
        for c in m.tool_calls if m.role == "assistant" else ():
            if c.name == ASSIGN_TASK:
                try:
                    prompts.append(str(json.loads(c.input).get("prompt", "")))
                except (ValueError, AttributeError):
                    continue
    text = "\n".join(prompts).lower()
    names = [str(s.get("entity", "")).lower() for s in subtasks]
    return sum(bool(name) and name in text for name in names) / n


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and its standard error (0 for fewer than two values)."""
    n = len(values)
    if n == 0:
        return 0.0, 0.0
    m = sum(values) / n
    if n < 2:
        return m, 0.0
    var = sum((v - m) ** 2 for v in values) / (n - 1)
    return m, math.sqrt(var / n)


def summarize(episodes: list[EpisodeSummary]) -> dict[str, float]:
    """``n``, then each of ``MEAN_FIELDS`` and each reward component as a mean, with ``<key>_se``."""
    out: dict[str, float] = {"n": float(len(episodes))}
    columns: dict[str, list[float]] = {k: [float(getattr(e, k)) for e in episodes] for k in MEAN_FIELDS}
    parts = sorted({k for e in episodes for k in (e.reward or {})})
    for k in parts:  # an unrewarded episode counts 0 for every component
        columns[f"reward_{k}"] = [float((e.reward or {}).get(k, 0.0)) for e in episodes]
    for key, values in columns.items():
        out[key], out[f"{key}_se"] = mean_se(values)
    return out
