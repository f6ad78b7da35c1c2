"""The agent swarm's limits: one typed schema for the runtime, ``kimi-lab swarm run`` and phase parl.

Phase parl reads it from ``phase.parl.swarm`` (a Hydra group like any other: an unknown
key fails at composition); the runtime and the commands build it directly. Defaults
are the runtime's; a config that wants others says so in its YAML, never in code that
maps one config onto another.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kimi_lab.errors import ConfigError

DEFAULT_CRITICAL_STEPS = 64  # a task that states no budget of its own


ACTION_LANGUAGES = ("index", "text")  # kimi_lab.swarm.actions


@dataclass
class SwarmConfig:
    # The orchestrator's action language: "index" (items by number: what a small model can
    # learn in minutes) or "text" (free-text prompts and answers, K2.5's form).
    actions: str = "index"
    max_orchestrator_steps: int = 32
    max_subagent_steps: int = 16  # per assignment
    # Critical-step budget of an episode; None: the task's own (task.data["budgets"]["critical_steps"]).
    max_critical_steps: int | None = None
    max_subagents: int = 100  # create_subagent calls that succeed, per episode
    max_concurrency: int = 100  # sub-agents running at once (the rest of a stage waits)
    subagent_timeout_s: float = 600.0  # one assignment, wall clock
    step_timeout_s: float = 120.0  # one policy call, any agent
    subagent_context_chars: int = 32_000  # a sub-agent's context; older tool results are cut past it
    result_chars: int = 4_000  # a sub-agent's result as the orchestrator reads it
    max_episode_s: float | None = None  # wall clock for the whole episode
    single_agent: bool = False  # no create_subagent / assign_task: the orchestrator works alone
    # Environment calls one turn may make (None: any); the rest are refused with an error.
    # Critical steps count one look-up per step (swarm/search_tasks.py's budgets assume it), so 1.
    max_env_calls_per_turn: int | None = 1
    # env.call in a worker thread: for environments that block (disk, network). In-memory
    # environments are faster called inline, and then a slow call delays the event loop.
    env_in_thread: bool = False

    def __post_init__(self) -> None:
        if self.actions not in ACTION_LANGUAGES:
            raise ConfigError(f"swarm.actions={self.actions!r}: choose from {', '.join(ACTION_LANGUAGES)}")
        for name in (
            "max_orchestrator_steps",
            "max_subagent_steps",
            "max_concurrency",
            "subagent_context_chars",
            "result_chars",
        ):
            _at_least(name, getattr(self, name), 1)
        _at_least("max_subagents", self.max_subagents, 0)
        for name in ("max_critical_steps", "max_env_calls_per_turn"):
            if getattr(self, name) is not None:
                _at_least(name, getattr(self, name), 1, " or null")
        for name in ("subagent_timeout_s", "step_timeout_s", "max_episode_s"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ConfigError(f"swarm.{name}={v} must be > 0")

    def critical_budget(self, task: Any) -> int:
        """The episode's critical-step budget: this config's, else the task's own, else the default."""
        if self.max_critical_steps is not None:
            return self.max_critical_steps
        budgets = getattr(task, "data", {}).get("budgets", {})
        return int(budgets.get("critical_steps", DEFAULT_CRITICAL_STEPS))


def _at_least(name: str, value: Any, least: int, alt: str = "") -> None:
    if not isinstance(value, int) or value < least:
        raise ConfigError(f"swarm.{name}={value} must be an integer >= {least}{alt}")
