"""Agent swarm (K2.5): an orchestrator that runs sub-agents concurrently, its traces and baselines.

Modules: ``actions`` (the orchestrator's two action languages: items by number, or free
text), ``prompts`` (the swarm's tools and system prompts), ``calls`` (checking a policy's
turn and tool arguments), ``result`` (``EpisodeResult``), ``summary`` (``EpisodeSummary``,
what every reader tabulates), ``runtime`` (the episode state machine) and ``lanes`` (where
its work runs), ``play`` (the one play loop), ``types`` (what policies, environments and
tasks share); the limits are ``kimi_lab.config.swarm.SwarmConfig``.
"""

from kimi_lab.chat_format import render_tools
from kimi_lab.config.swarm import SwarmConfig
from kimi_lab.swarm.prompts import ASSIGN_TASK, CREATE_SUBAGENT
from kimi_lab.swarm.result import EpisodeResult
from kimi_lab.swarm.runtime import run_episode, run_episode_sync
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
