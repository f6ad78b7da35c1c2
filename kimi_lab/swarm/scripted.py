"""Scripted policies: the baselines a trained orchestrator is compared with, and load for benchmarks.

They read a task's plan from ``task.data["subtasks"]`` (``[{"prompt", "calls":
[[tool, input], ...], "answer"}]``) and keep no state between calls: each derives
where it is from the messages it is given, so one instance can play many episodes.
Orchestrators write the action language the runtime offers (``kimi_lab.swarm.actions``:
items by number, or free text), which they tell from the tools they are given.

- ``SingleAgentPolicy``: one agent does every sub-task's calls itself, one tool call
  per step (critical steps grow with the task's width); in the index language, one
  ``solve`` of every item.
- ``FanOutPolicy``: the orchestrator creates sub-agents in one turn, assigns the
  sub-tasks ``width`` at a time, then combines the results (critical steps stay flat);
  with ``extra`` it also spawns sub-agents it gives vague work (spurious parallelism).
- ``ScriptedSubagent``: a sub-agent that matches its assigned prompt to a sub-task and
  runs that sub-task's verified calls, one per step: an oracle for any prompt that names
  the sub-task's entity. A prompt it cannot match leaves it searching until its steps
  run out, as a lost model sub-agent would (an error for the orchestrator, no result).
- ``SimulatedPolicy``: fixed latency and step count, for benchmarks and fault tests.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from kimi_lab.chat_format import Message, ToolCall, extract_answer
from kimi_lab.swarm.actions import SELF, item_names, result_values
from kimi_lab.swarm.prompts import ASSIGN_TASK, CREATE_SUBAGENT, SOLVE
from kimi_lab.swarm.types import SwarmTask, ToolSpec, Turn

Combine = Callable[[SwarmTask, list[str]], str]


def _combine(task: SwarmTask, answers: list[str], combine: Combine | None) -> str:
    if combine is None:
        # tasks.py is the task suite's own module; imported late so the runtime does not need it
        from kimi_lab.swarm.search_tasks import combine_answers as combine
    text = combine(task, answers)
    return text if extract_answer(text) is not None else f"Answer: {text}"


def _subtasks(task: SwarmTask) -> list[dict[str, Any]]:
    subs = task.data.get("subtasks")
    if not isinstance(subs, list):
        raise ValueError(f"task {task.id} has no data['subtasks'] list for a scripted policy")
    return subs


def _call(tool: str, tool_input: Any) -> ToolCall:
    return ToolCall(str(tool), tool_input if isinstance(tool_input, str) else json.dumps(tool_input))


def _turn(content: str = "", calls: list[ToolCall] | None = None) -> Turn:
    return Turn(Message("assistant", content, calls or []))


def _steps_taken(messages: list[Message]) -> int:
    return sum(m.role == "assistant" for m in messages)


def _results_of(messages: list[Message], tool: str) -> list[str]:
    """The tool messages that answered calls of ``tool``, in order (calls and results pair up in order)."""
    out: list[str] = []
    pending: list[str] = []
    for m in messages:
        if m.role == "assistant":
            pending = [c.name for c in m.tool_calls]
        elif m.role == "tool" and pending and pending.pop(0) == tool:
            out.append(m.content)
    return out


def _speaks_index(tools: list[ToolSpec]) -> bool:
    """Whether the runtime offered the index language (its tools are the language: ``solve`` is its own)."""
    return any(t.name == SOLVE for t in tools)


def _index_call(tool: str, **args: Any) -> ToolCall:
    # compact JSON, as the index language's tool descriptions write it
    return ToolCall(tool, json.dumps(args, separators=(",", ":")))


def _index_answer(
    task: SwarmTask, refs: list[tuple[int, str]], values: dict[int, str], combine: Combine | None
) -> Turn:
    """The index language's answer: ``ITEM=AGENT`` per item (0-based ``refs``), or for a task that asks
    which item (argmax / argmin), that item's number."""
    op = task.data.get("combine", {}).get("op", "list")
    if op == "list":
        return _turn("Answer:\n" + "\n".join(f"{i + 1}={agent}" for i, agent in refs))
    names = item_names(task)
    text = _combine(task, [values.get(i, "") for i in range(len(names))], combine)
    winner = extract_answer(text) or ""
    return _turn(f"Answer: {names.index(winner) + 1}" if winner in names else "Answer: unknown")


def _index_values(messages: list[Message]) -> dict[int, str]:
    """Item (0-based) -> value, from the index language's assignment results (``N: VALUE`` lines)."""
    out: dict[int, str] = {}
    for m in messages:
        if m.role != "tool":
            continue
        for line in m.content.splitlines():
            label, sep, value = line.partition(": ")
            if sep and label.isdigit() and not value.startswith("error:"):
                out[int(label) - 1] = value.strip()
    return out


class SingleAgentPolicy:
    """One agent, every item itself, one look-up per step; then the combined answer. In the index
    language one ``solve`` of every item, last first, and an answer that counts down the same way
    (as ``FanOutPolicy(interleave=True)`` does; the runtime charges each look-up on the critical path)."""

    def __init__(self, task: SwarmTask, combine: Combine | None = None) -> None:
        self.name = "single-agent"
        self.task = task
        self.combine = combine
        self.plan = [_call(t, i) for s in _subtasks(task) for t, i in s.get("calls", [])]

    async def act(self, messages: list[Message], tools: list[ToolSpec], role: str) -> Turn:
        k = _steps_taken(messages)
        n = len(_subtasks(self.task))
        if _speaks_index(tools):
            if k == 0 and n:
                return _turn(calls=[_index_call(SOLVE, items=list(range(n, 0, -1)))])
            refs = [(i, SELF) for i in range(n - 1, -1, -1)]
            return _index_answer(self.task, refs, _index_values(messages), self.combine)
        if k < len(self.plan):
            return _turn(calls=[self.plan[k]])
        answers = [str(s.get("answer", "")) for s in _subtasks(self.task)]
        return _turn(_combine(self.task, answers, self.combine))


class ScriptedSubagent:
    """Runs the calls of the sub-task its assigned prompt names, one per step; returns its answer."""

    def __init__(self, task: SwarmTask) -> None:
        self.name = "scripted-subagent"
        self.task = task
        self.subtasks = _subtasks(task)

    def match(self, prompt: str) -> dict[str, Any] | None:
        """The sub-task of ``prompt``: the same prompt, else one contained in it, else the one sub-task
        whose entity it names (none when it names several), else (tasks without entities) the most
        shared words."""
        prompt = prompt.strip()
        for s in self.subtasks:
            if str(s.get("prompt", "")).strip() == prompt:
                return s
        for s in self.subtasks:
            if s.get("prompt") and str(s["prompt"]).strip() in prompt:
                return s
        if any(s.get("entity") for s in self.subtasks):
            low = prompt.lower()
            named = [s for s in self.subtasks if s.get("entity") and str(s["entity"]).lower() in low]
            return named[0] if len(named) == 1 else None
        words = set(prompt.lower().split())
        best = max(
            self.subtasks,
            key=lambda s: len(words & set(str(s.get("prompt", "")).lower().split())),
            default=None,
        )
        if best is None or not words & set(str(best.get("prompt", "")).lower().split()):
            return None
        return best

    async def act(self, messages: list[Message], tools: list[ToolSpec], role: str) -> Turn:
        prompt = next((m.content for m in messages if m.role == "user"), "")
        sub = self.match(prompt)
        if sub is None:  # lost: keeps searching for the prompt, until the runtime stops it
            tool = next((t.name for t in tools if t.name == "search"), tools[0].name if tools else None)
            if tool is None:
                return _turn("I could not match this assignment to a sub-task.")
            return _turn(calls=[_call(tool, " ".join(prompt.split()[:12]))])
        calls = sub.get("calls", [])
        k = _steps_taken(messages)
        if k < len(calls):
            return _turn(calls=[_call(*calls[k])])
        return _turn(str(sub.get("answer", "")))


VAGUE_PROMPT = "Look for anything else useful about these items."  # the work an extra sub-agent gets


class FanOutPolicy:
    """Orchestrator: create ``width`` sub-agents, assign the sub-tasks ``width`` per turn, combine.

    ``width`` defaults to ``task.width`` (every sub-task at once when that is 0). ``extra``
    more sub-agents are created and, in the first stage, given vague work (free text:
    ``VAGUE_PROMPT``; index language: no item, the whole task undecomposed): spawning
    without a decomposition, which costs critical steps and returns nothing (the spurious
    parallelism r_finish is meant to discourage). ``interleave`` (how demonstrations are
    written): one turn creates and assigns, item by item from the question's last item to its
    first (create w7, assign w7 item 7, create w6, ...), and the answer counts down the same
    way: a model imitating it reads the width once, from the question's last line, and stops
    at item 1, a fixed point, instead of comparing its count with the width at every step.
    Asked to act as a sub-agent, it runs the scripted sub-agent, so one instance can play both
    roles. It writes whichever action language the runtime offers.
    """

    def __init__(
        self,
        task: SwarmTask,
        width: int | None = None,
        combine: Combine | None = None,
        extra: int = 0,
        interleave: bool = False,
    ) -> None:
        self.name = "fan-out"
        self.task = task
        self.combine = combine
        self.subtasks = _subtasks(task)
        w = width or task.width or len(self.subtasks)
        self.width = max(1, min(w, len(self.subtasks) or 1))
        # numbered from 1, like the items of a question: sub-agent w3 gets item 3
        self.agents = [f"w{i}" for i in range(1, self.width + 1)]
        self.extra = [f"x{i}" for i in range(1, 1 + max(0, extra))]  # counted on their own
        if interleave:  # last first, as the items
            self.extra.reverse()
        self.sub = ScriptedSubagent(task)
        self.interleave = interleave

    def _create(self, agent: str, index: bool) -> ToolCall:
        if index:
            return _index_call(CREATE_SUBAGENT, name=agent)
        return ToolCall(CREATE_SUBAGENT, json.dumps({"name": agent, "system_prompt": ""}))

    def _assign(self, agent: str, item: int | None, index: bool) -> ToolCall:
        """``item`` (0-based) to ``agent``; None: vague work."""
        if index:
            return _index_call(ASSIGN_TASK, agent=agent, items=[] if item is None else [item + 1])
        prompt = VAGUE_PROMPT if item is None else str(self.subtasks[item].get("prompt", ""))
        return ToolCall(ASSIGN_TASK, json.dumps({"agent": agent, "prompt": prompt}))

    def _stage(self, batch: int, index: bool, create: bool) -> list[ToolCall]:
        """The ``batch``-th stage's calls (creations first, or each before its assignment)."""
        first = batch * self.width
        pairs = [(a, first + j) for j, a in enumerate(self.agents) if first + j < len(self.subtasks)]
        if self.interleave:
            pairs.reverse()
        if batch == 0:
            pairs += [(a, None) for a in self.extra]
        if not create:
            return [self._assign(a, i, index) for a, i in pairs]
        return [c for a, i in pairs for c in (self._create(a, index), self._assign(a, i, index))]

    async def act(self, messages: list[Message], tools: list[ToolSpec], role: str) -> Turn:
        if role != "orchestrator":
            return await self.sub.act(messages, tools, role)
        index = _speaks_index(tools)
        k = _steps_taken(messages)
        batches = -(-len(self.subtasks) // self.width)
        if self.interleave:  # turn k is stage k, the first one creating as it goes
            if k < batches:
                return _turn(calls=self._stage(k, index, create=k == 0))
        elif k == 0 and self.subtasks:
            return _turn(calls=[self._create(a, index) for a in self.agents + self.extra])
        elif 0 <= k - 1 < batches:
            return _turn(calls=self._stage(k - 1, index, create=False))
        if index:
            refs = [(i, self.agents[i % self.width]) for i in range(len(self.subtasks))]
            if self.interleave:
                refs.reverse()
            return _index_answer(self.task, refs, _index_values(messages), self.combine)
        return self._answer(messages)

    def _answer(self, messages: list[Message]) -> Turn:
        """The free-text answer, combined from the assignments' results (``NAME: VALUE`` lines)."""
        answers = [v for m in _results_of(messages, ASSIGN_TASK) for v in result_values(m)]
        if self.extra:  # drop the vague assignments' replies (the last ones of the first stage)
            n = min(self.width, len(self.subtasks))
            answers = answers[:n] + answers[n + len(self.extra) :]
        if self.interleave:  # each stage's items came back last first
            answers = [
                a for b in range(0, len(answers), self.width) for a in answers[b : b + self.width][::-1]
            ]
        answers += [""] * (len(self.subtasks) - len(answers))
        return _turn(_combine(self.task, answers[: len(self.subtasks)], self.combine))


class SimulatedPolicy:
    """Sleeps ``latency_s`` per step; ``steps`` steps per run (the last one answers).

    As a sub-agent (or an orchestrator without ``agents``) its first ``steps - 1`` turns
    call ``tool`` (default: the first tool offered). As an orchestrator with ``agents``
    it creates that many sub-agents in one turn, assigns them all in the next, and answers.
    """

    def __init__(
        self, latency_s: float = 0.0, steps: int = 1, agents: int = 0, tool: str | None = None
    ) -> None:
        if steps < 1:
            raise ValueError(f"SimulatedPolicy needs steps >= 1 (got {steps})")
        self.name = "simulated"
        self.latency_s = latency_s
        self.steps = steps
        self.agents = agents
        self.tool = tool

    async def act(self, messages: list[Message], tools: list[ToolSpec], role: str) -> Turn:
        if self.latency_s > 0:
            await asyncio.sleep(self.latency_s)
        k = _steps_taken(messages)
        if role == "orchestrator" and self.agents > 0:
            names = [f"sim{i}" for i in range(self.agents)]
            index = _speaks_index(tools)
            if k == 0:
                if index:
                    return _turn(calls=[_index_call(CREATE_SUBAGENT, name=n) for n in names])
                return _turn(
                    calls=[
                        ToolCall(CREATE_SUBAGENT, json.dumps({"name": n, "system_prompt": ""})) for n in names
                    ]
                )
            if k == 1:
                if index:  # no item: each gets the whole task (a simulated worker ignores it)
                    return _turn(calls=[_index_call(ASSIGN_TASK, agent=n, items=[]) for n in names])
                return _turn(
                    calls=[
                        ToolCall(ASSIGN_TASK, json.dumps({"agent": n, "prompt": f"part {n}"})) for n in names
                    ]
                )
            results = _results_of(messages, ASSIGN_TASK)
            done = sum(bool(v) for r in results for v in result_values(r))
            return _turn(f"Answer: {done} of {self.agents} parts done")
        tool = self.tool or (tools[0].name if tools else None)
        if k < self.steps - 1 and tool is not None:
            return _turn(calls=[ToolCall(tool, f"step {k}")])
        return _turn(f"Answer: done in {k + 1} steps")
