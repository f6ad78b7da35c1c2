"""What the agents of a swarm are told: the swarm's own tools and the system prompts.

In the index language (``kimi_lab.swarm.actions``) the orchestrator's tools are
``create_subagent`` (``{"name"}``), ``assign_task`` (``{"agent", "items"}``) and ``solve``
(``{"items"}``); in the free-text one ``create_subagent`` (``{"name", "system_prompt"}``)
and ``assign_task`` (``{"agent", "prompt"}``) beside the environment's tools. A sub-agent
sees the environment's tools only. ``kimi_lab.chat_format.render_tools`` writes a tool list into a
system prompt: the rendering ``kimi-lab serve`` gives the tools a request declares.
"""

from __future__ import annotations

from kimi_lab import metrics as M
from kimi_lab.chat_format import render_tools
from kimi_lab.swarm.types import ToolSpec

ORCHESTRATOR = M.SWARM_ORCHESTRATOR  # the orchestrator's lane in traces, and its role name
CREATE_SUBAGENT = "create_subagent"
ASSIGN_TASK = "assign_task"
SOLVE = "solve"

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
# The index language: items by number (compact JSON: a number reads as in the question's list)
INDEX_TOOLS = (
    ToolSpec(CREATE_SUBAGENT, "create a sub-agent", '{"name":NAME}'),
    ToolSpec(
        ASSIGN_TASK,
        "give a sub-agent items by number; one turn's assignments run in parallel, a sub-agent does "
        "its items one after another",
        '{"agent":NAME,"items":[N,...]}',
    ),
    ToolSpec(SOLVE, "look items up yourself, one after another", '{"items":[N,...]}'),
)

ORCHESTRATOR_PROMPT = (
    "You lead a swarm of sub-agents. Split the task into independent sub-tasks and give them to "
    "sub-agents, or use the tools yourself. When you know the answer, reply without tool calls, "
    "ending with a line 'Answer: ...'."
)
INDEX_ORCHESTRATOR_PROMPT = (
    "You lead a swarm of sub-agents. Split the task's numbered items between sub-agents, or solve "
    "them yourself. When you have the results, reply without tool calls: 'Answer:' and one line "
    "ITEM=AGENT per item (the agent whose result it is; self for your own)."
)
INDEX_SINGLE_AGENT_PROMPT = (
    "Solve the task's numbered items yourself. When you have the results, reply without tool calls: "
    "'Answer:' and one line ITEM=self per item."
)
SUBAGENT_PROMPT = "You are a sub-agent. Solve the assigned task with the tools; reply with only your result."
SINGLE_AGENT_PROMPT = (
    "Solve the task with the tools. When you know the answer, reply without tool calls and "
    "end with a line 'Answer: ...'."
)


def orchestrator_tools(
    env_tools: list[ToolSpec], language: str, single_agent: bool = False
) -> list[ToolSpec]:
    """The tools the orchestrator may call: in the index language the swarm's (``solve`` alone for a
    single agent), in the free one the environment's and, unless single, the swarm's."""
    if language == "index":
        return [INDEX_TOOLS[-1]] if single_agent else list(INDEX_TOOLS)
    return list(env_tools) + ([] if single_agent else list(SWARM_TOOLS))


def orchestrator_system(env_tools: list[ToolSpec], single_agent: bool = False, language: str = "text") -> str:
    """The orchestrator's system prompt (a single agent's, without the swarm tools)."""
    tools = render_tools(orchestrator_tools(env_tools, language, single_agent))
    if language == "index":
        return (INDEX_SINGLE_AGENT_PROMPT if single_agent else INDEX_ORCHESTRATOR_PROMPT) + "\n\n" + tools
    return (SINGLE_AGENT_PROMPT if single_agent else ORCHESTRATOR_PROMPT) + "\n\n" + tools


def subagent_system(system_prompt: str, env_tools: list[ToolSpec]) -> str:
    """A sub-agent's system prompt: what the orchestrator wrote (or the default), then its tools."""
    return (system_prompt or SUBAGENT_PROMPT) + "\n\n" + render_tools(env_tools)
