"""Agent swarm (K2.5): an orchestrator that runs sub-agents concurrently, its traces and baselines."""

from kimi_lab.swarm.runtime import (
    ASSIGN_TASK,
    CREATE_SUBAGENT,
    EpisodeResult,
    SwarmConfig,
    render_tools,
    run_episode,
    run_episode_sync,
)
from kimi_lab.swarm.scripted import FanOutPolicy, ScriptedSubagent, SimulatedPolicy, SingleAgentPolicy
from kimi_lab.swarm.trace import TraceWriter
from kimi_lab.swarm.types import Environment, Policy, SwarmTask, ToolSpec, Turn

__all__ = [
    "ASSIGN_TASK",
    "CREATE_SUBAGENT",
    "Environment",
    "EpisodeResult",
    "FanOutPolicy",
    "Policy",
    "ScriptedSubagent",
    "SimulatedPolicy",
    "SingleAgentPolicy",
    "SwarmConfig",
    "SwarmTask",
    "ToolSpec",
    "TraceWriter",
    "Turn",
    "render_tools",
    "run_episode",
    "run_episode_sync",
]
