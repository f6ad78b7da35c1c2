"""What the agents of a swarm are told: the swarm's own tools and the system prompts.

The orchestrator's tools are ``create_subagent`` (``{"name", "system_prompt"}``) and
``assign_task`` (``{"agent", "prompt"}``) beside the environment's; a sub-agent sees
the environment's tools only. ``kimi_lab.chat.render_tools`` writes a tool list into a
system prompt: the rendering ``kimi-lab serve`` gives the tools a request declares.
"""

from __future__ import annotations

from kimi_lab import metrics as M
from kimi_lab.chat import render_tools
from kimi_lab.swarm.types import ToolSpec

ORCHESTRATOR = M.SWARM_ORCHESTRATOR  # the orchestrator's lane in traces, and its role name
CREATE_SUBAGENT = "create_subagent"
ASSIGN_TASK = "assign_task"

# Short on purpose: every prompt token is paid for in each episode and each demonstration.
CREATE_SPEC = ToolSpec(
    CREATE_SUBAGENT,
    "create a sub-agent (an empty system prompt: the default)",
    '{"name": NAME, "system_prompt": TEXT}',
)
ASSIGN_SPEC = ToolSpec(
    ASSIGN_TASK,
    "give a sub-agent a task; one turn's assignments run in parallel, each returns only its result",
    '{"agent": NAME, "prompt": TEXT}',
)
SWARM_TOOLS = (CREATE_SPEC, ASSIGN_SPEC)

ORCHESTRATOR_PROMPT = (
    "You lead a swarm of sub-agents. Split the task into independent sub-tasks and give them to "
    "sub-agents, or use the tools yourself. When you know the answer, reply without tool calls, "
    "ending with a line 'Answer: ...'."
)
SUBAGENT_PROMPT = "You are a sub-agent. Solve the assigned task with the tools; reply with only your result."
SINGLE_AGENT_PROMPT = (
    "Solve the task with the tools. When you know the answer, reply without tool calls and "
    "end with a line 'Answer: ...'."
)


def orchestrator_system(env_tools: list[ToolSpec], single_agent: bool = False) -> str:
    """The orchestrator's system prompt (a single agent's, without the swarm tools)."""
    if single_agent:
        return SINGLE_AGENT_PROMPT + "\n\n" + render_tools(env_tools)
    return ORCHESTRATOR_PROMPT + "\n\n" + render_tools([*env_tools, *SWARM_TOOLS])


def subagent_system(system_prompt: str, env_tools: list[ToolSpec]) -> str:
    """A sub-agent's system prompt: what the orchestrator wrote (or the default), then its tools."""
    return (system_prompt or SUBAGENT_PROMPT) + "\n\n" + render_tools(env_tools)
