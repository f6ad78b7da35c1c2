"""The orchestrator's two action languages: what its swarm tools take, what it reads back, its answer.

PARL trains the *decomposition* (how many sub-agents, which items each takes, when to
answer). A small model can learn that in minutes; copying entity names through JSON
it cannot (about 7 BPE pieces a name, and a quarter of every demonstration's targets).
So the orchestrator has one of two languages, ``SwarmConfig.actions``:

- ``index`` (the default): the task's items are referred to by their number in the
  question. ``create_subagent {"name":"w3"}``; ``assign_task {"agent":"w3","items":[3,7]}``
  (a sub-agent given several items does them one after another, each from the item's
  own sub-task prompt, rendered here for the frozen sub-agent as the free form would
  write it; no item: the whole question, undecomposed); ``solve {"items":[2]}`` (the
  orchestrator looks the items up itself, one after another, at their cost in critical
  steps: serial work stays a real choice). It answers ``Answer:`` and one ``ITEM=AGENT``
  line per item (``self`` for its own), and ``render_answer`` turns that into the task's
  ``NAME: VALUE; ...`` before it is scored.
- ``text``: K2.5's free form, for models that can write it: ``create_subagent {"name",
  "system_prompt"}``, ``assign_task {"agent", "prompt"}``, the environment's own tools,
  and the answer written out in full.

Both render an assignment's result as ``NAME: VALUE`` lines, so a value reads the same
(one leading space) in a result as in the task's answer: a model that copies it never
has to re-spell its first piece. Everything a policy writes wrong becomes an error text
for it to read; nothing here raises.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from kimi_lab.chat_format import extract_answer
from kimi_lab.config.swarm import ACTION_LANGUAGES
from kimi_lab.swarm.calls import AGENT_NAME, json_args
from kimi_lab.swarm.prompts import ASSIGN_TASK, CREATE_SUBAGENT, ORCHESTRATOR
from kimi_lab.swarm.trace import preview
from kimi_lab.swarm.types import SwarmTask

SELF = "self"  # the orchestrator's own lane: a name in index answers and traces, never a sub-agent's
MAX_REPLY_CHARS = 20_000  # a reply's value is at its end; bounds the work on huge outputs
_ANSWER_START = re.compile(r"(?im)^[ \t]*answer[ \t]*:")
_REF = re.compile(r"(\d+)(?:[ \t]*=[ \t]*([A-Za-z0-9_.-]+))?")


@dataclass(frozen=True)
class Job:
    """One unit of a lane's work: an item of the task (0-based; None: not tied to one) and the prompt
    its worker is given."""

    item: int | None
    prompt: str


@dataclass(frozen=True)
class Spawn:
    """A parsed ``create_subagent``: the name, and the system prompt (free text only; "": the default)."""

    name: str
    system_prompt: str = ""


@dataclass(frozen=True)
class Work:
    """A parsed ``assign_task`` (``agent``: the sub-agent) or ``solve`` (``agent``: ``SELF``)."""

    agent: str
    jobs: tuple[Job, ...]


def reply_value(text: Any) -> str:
    """A worker's reply reduced to its value: its ``Answer:`` line when it has one, else its last line."""
    if not isinstance(text, str):
        return ""
    text = text[-MAX_REPLY_CHARS:]
    value = extract_answer(text) or (text.strip().splitlines() or [""])[-1]
    return value.strip().rstrip(".").strip()


def item_names(task: SwarmTask) -> list[str]:
    """The names of the task's numbered items (``data["subtasks"][i]["entity"]``)."""
    return [str(s.get("entity", "")) for s in task.data.get("subtasks", [])]


def item_prompts(task: SwarmTask) -> list[str]:
    """Each item's sub-task, as a sub-agent is told it (``data["subtasks"][i]["prompt"]``)."""
    return [str(s.get("prompt", "")) for s in task.data.get("subtasks", [])]


def question(task: SwarmTask, language: str) -> str:
    """What the orchestrator is asked: the task's question and its answer format in ``language``."""
    fmt = task.data.get("answer_format", {})
    line = fmt.get(language) if isinstance(fmt, dict) else None
    return f"{task.question}\n{line}" if line else task.question


def result_text(agent: str, lines: list[tuple[str, str]]) -> str:
    """The tool message of one assignment: a ``LABEL: VALUE`` line per job (``LABEL``: the item's
    number in the index language, the sub-agent's name in the free one)."""
    return "\n".join(f"{label}: {value}" for label, value in lines)


def result_values(message: str) -> list[str]:
    """The values of ``result_text``'s lines ("" for an error), in order: what a reader of an
    assignment's tool message gets back."""
    if message.startswith("error:"):
        return [""]
    values = []
    for line in message.splitlines():
        _, sep, value = line.partition(": ")
        values.append("" if not sep or value.startswith("error:") else value.strip())
    return values


class IndexActions:
    """The index language (see the module docstring) for one task."""

    name = "index"

    def __init__(self, task: SwarmTask) -> None:
        self.task = task
        self.names = item_names(task)
        self.prompts = item_prompts(task)

    def create(self, text: str) -> Spawn | str:
        """The new sub-agent, or an error text."""
        d = json_args(text, ("name",), CREATE_SUBAGENT)
        return d if isinstance(d, str) else Spawn(d["name"])

    def items(self, d: dict[str, Any], tool: str) -> tuple[Job, ...] | str:
        raw = d.get("items")
        n = len(self.prompts)
        if not isinstance(raw, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in raw):
            return f'{tool} takes "items": a list of item numbers (1 to {n})'
        bad = [i for i in raw if not 1 <= i <= n]
        if bad:
            return f"{tool}: no item {bad[0]} (items are numbered 1 to {n})"
        if len(set(raw)) < len(raw):
            return f"{tool}: an item is listed twice"
        if not raw:  # nothing picked out: the whole task, undecomposed
            return (Job(None, question(self.task, "text")),)
        return tuple(Job(i - 1, self.prompts[i - 1]) for i in raw)

    def work(self, tool: str, text: str) -> Work | str:
        """An ``assign_task`` or ``solve`` call as work for one lane, or an error text."""
        try:
            d = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            d = None
        want = '{"agent":NAME,"items":[N,...]}' if tool == ASSIGN_TASK else '{"items":[N,...]}'
        if not isinstance(d, dict):
            return f"{tool} takes a JSON object {want} (got {preview(text, 80)!r})"
        agent = SELF
        if tool == ASSIGN_TASK:
            agent = d.get("agent")
            if not isinstance(agent, str):
                return f"{tool} takes a JSON object {want} (got {preview(text, 80)!r})"
        jobs = self.items(d, tool)
        return jobs if isinstance(jobs, str) else Work(agent, jobs)

    def label(self, job: Job, agent: str) -> str:
        return str(job.item + 1) if job.item is not None else "task"

    def shown(self, reply: str) -> str:
        """What the orchestrator reads of a worker's reply: its value."""
        return reply_value(reply)

    def render_answer(self, final_text: str, values: dict[str, dict[int, str]]) -> str:
        """``Answer:`` + ``ITEM=AGENT`` references -> the task's ``Answer: NAME: VALUE; ...`` (a bare
        ``ITEM``: its name, for tasks that ask which item). A reference to work that never returned
        that item's value renders nothing; text without an ``Answer:`` line renders as it is."""
        starts = list(_ANSWER_START.finditer(final_text[-MAX_REPLY_CHARS:]))
        if not starts:
            return final_text
        body = final_text[-MAX_REPLY_CHARS:][starts[-1].end() :]
        parts = []
        for m in _REF.finditer(body):
            i = int(m.group(1)) - 1
            if not 0 <= i < len(self.names):
                continue
            if m.group(2) is None:
                parts.append(self.names[i])
            elif (v := values.get(m.group(2), {}).get(i)) is not None:
                parts.append(f"{self.names[i]}: {v}")
        return "Answer: " + "; ".join(parts)


class TextActions:
    """The free-text language (K2.5's): sub-agents get the prompts the orchestrator writes."""

    name = "text"

    def __init__(self, task: SwarmTask) -> None:
        self.task = task

    def create(self, text: str) -> Spawn | str:
        d = json_args(text, ("name", "system_prompt"), CREATE_SUBAGENT)
        return d if isinstance(d, str) else Spawn(d["name"], d["system_prompt"])

    def work(self, tool: str, text: str) -> Work | str:
        if tool != ASSIGN_TASK:
            return f"unknown tool {tool!r}"
        d = json_args(text, ("agent", "prompt"), ASSIGN_TASK)
        return d if isinstance(d, str) else Work(d["agent"], (Job(None, d["prompt"]),))

    def label(self, job: Job, agent: str) -> str:
        return agent

    def shown(self, reply: str) -> str:
        """What the orchestrator reads of a sub-agent's reply: all of it."""
        return reply.strip()

    def render_answer(self, final_text: str, values: dict[str, dict[int, str]]) -> str:
        return final_text


Actions = IndexActions | TextActions


def actions_for(task: SwarmTask, language: str) -> Actions:
    if language == "index":
        return IndexActions(task)
    if language == "text":
        return TextActions(task)
    raise ValueError(f"swarm actions {language!r}: choose from {', '.join(ACTION_LANGUAGES)}")


def is_agent_name(name: str) -> bool:
    """A name ``create_subagent`` accepts: a short identifier, not a reserved lane."""
    return bool(AGENT_NAME.fullmatch(name)) and name not in (ORCHESTRATOR, SELF)
