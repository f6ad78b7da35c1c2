"""Where a swarm's work runs: lanes (a sub-agent's assignment, or the orchestrator's own ``solve``
work), each doing its jobs one after another, and every agent's calls of the environment's tools.

``Lanes`` is the half of the episode state machine (``kimi_lab.swarm.runtime``) below the
orchestrator's turns: it counts each lane's steps (the stage costs its slowest lane's),
bounds every policy call in time, and turns every fault of a worker (its policy raised,
hung, returned something that is not a Turn, used up its steps, was cut by its token
budget) into an ``error: ...`` line of the lane's result and an ``error`` trace event.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Iterator
from typing import Any, TypeVar

from kimi_lab.chat_format import Message, ToolCall
from kimi_lab.config.swarm import SwarmConfig
from kimi_lab.swarm.actions import SELF, Actions, Job, Work, reply_value, result_text
from kimi_lab.swarm.calls import Fault, bound_context, check_turn
from kimi_lab.swarm.prompts import ORCHESTRATOR, subagent_system
from kimi_lab.swarm.result import EpisodeResult
from kimi_lab.swarm.trace import TraceWriter, preview
from kimi_lab.swarm.types import Environment, Policy, ToolSpec

_CANCEL_GRACE_S = 1.0  # how long a cancelled policy call may take to unwind before it is left behind

T = TypeVar("T")


async def _bounded(aw: Awaitable[T], timeout: float) -> T:
    """``aw`` within ``timeout`` seconds, else cancelled and TimeoutError.

    Unlike ``asyncio.wait_for`` this never waits on a callee that ignores its
    cancellation for longer than a short grace: it is left behind instead.
    """
    task = asyncio.ensure_future(aw)
    try:
        done, _ = await asyncio.wait({task}, timeout=max(timeout, 0.0))
    except asyncio.CancelledError:
        task.cancel()
        raise
    if done:
        return task.result()
    task.cancel()
    await asyncio.wait({task}, timeout=_CANCEL_GRACE_S)
    # retrieve a late exception so asyncio does not log it as never retrieved
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
    raise asyncio.TimeoutError


async def _within(aw: Awaitable[T], timeout: float) -> T:
    """``aw`` within ``timeout`` seconds (TimeoutError), on the current task: no task per call."""
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(timeout):
            return await aw
    return await asyncio.wait_for(aw, timeout)


class Lanes:
    """The episode's workers and tools; ``kimi_lab.swarm.runtime._Episode`` sets these fields."""

    cfg: SwarmConfig
    r: EpisodeResult
    env: Environment
    sub: Policy
    trace: TraceWriter | None
    lang: Actions
    tools: list[ToolSpec]  # the orchestrator's
    env_tools: list[ToolSpec]
    env_names: set[str]
    agents: dict[str, str]  # sub-agent name -> its system prompt
    values: dict[str, dict[int, str]]  # lane -> item -> the value its work returned
    sem: asyncio.Semaphore

    # ---------------------------------------------------------------- helpers
    def emit(
        self,
        agent: str,
        kind: str,
        detail: dict[str, Any] | None = None,
        parent: str | None = None,
        step: int | None = None,
    ) -> None:
        if self.trace is not None:
            self.trace.emit(agent, kind, detail, parent, self.r.critical_steps if step is None else step)

    def error(self, agent: str, text: str, parent: str | None = None, step: int | None = None) -> Message:
        """Count and trace an error observation; the tool message that carries it."""
        self.r.errors += 1
        self.emit(agent, "error", {"error": preview(text)}, parent, step)
        return Message("tool", f"error: {text}")

    def tool_names(self, agent: str) -> set[str]:
        """The tools ``agent`` may call: the orchestrator's (by language), a sub-agent's environment."""
        return {t.name for t in self.tools} if agent == ORCHESTRATOR else self.env_names

    def numbered(self, calls: list[ToolCall], agent: str) -> Iterator[tuple[int, ToolCall]]:
        """A turn's calls, each with its index among the turn's environment calls (from 1; 0: not one)."""
        n = 0
        allowed = self.tool_names(agent) & self.env_names
        for c in calls:
            n += c.name in allowed
            yield (n if c.name in allowed else 0), c

    async def env_tool(
        self, agent: str, parent: str | None, call: ToolCall, nth: int, step: int | None
    ) -> Message:
        """Any agent's call of an environment tool (the ``nth`` of its turn), or of a tool it lacks."""
        if nth == 0:
            known = ", ".join(sorted(self.tool_names(ORCHESTRATOR if parent is None else "subagent")))
            return self.error(
                agent, f"unknown tool {preview(call.name, 40)!r} (tools: {known})", parent, step
            )
        most = self.cfg.max_env_calls_per_turn
        if most is not None and nth > most:
            text = f"at most {most} environment tool call(s) per turn; this one was not run"
            return self.error(agent, text, parent, step)
        return await self.env_call(agent, parent, call, step)

    async def env_call(self, agent: str, parent: str | None, call: ToolCall, step: int | None) -> Message:
        self.emit(agent, "tool_call", {"tool": call.name, "input": preview(call.input)}, parent, step)
        try:
            if self.cfg.env_in_thread:
                out = await asyncio.to_thread(self.env.call, call.name, call.input)
            else:
                out = self.env.call(call.name, call.input)
        except Exception as exn:  # the protocol says never raises; a bug there must not end the episode
            out = f"error: {call.name} failed: {type(exn).__name__}: {exn}"
        if not isinstance(out, str):
            out = str(out)
        self.r.tool_calls += 1
        self.emit(agent, "tool_result", {"tool": call.name, "chars": len(out)}, parent, step)
        return Message("tool", out)

    # ---------------------------------------------------------------- lanes: sub-agents and self
    async def lane(
        self, work: Work, stage: int, base: int, limit: int, timeout: float
    ) -> tuple[Message, int]:
        """One lane's work in a stage, its jobs one after another: (the tool message, steps taken).

        A sub-agent's jobs share the stage's ``limit``; the orchestrator's own (``SELF``) may use
        every step the budget has left: work that does not fit leaves no step to answer in, and
        the episode ends over budget (as a single agent's would)."""
        r, own = self.r, work.agent == SELF
        name = SELF if own else work.agent
        if own:
            limit = r.budget - base
        else:
            r.assignments += 1
        items = [j.item + 1 for j in work.jobs if j.item is not None]
        r.items_assigned = sorted(set(r.items_assigned) | {i - 1 for i in items})
        detail: dict[str, Any] = {"stage": stage, "prompt": preview(work.jobs[0].prompt)}
        if items:
            detail["items"] = items
        self.emit(name, "assign", detail, ORCHESTRATOR, base)
        steps = [0]  # counted as they are taken, so a timed-out lane still reports its steps
        lines: list[tuple[str, str]] = []
        ok = 0
        deadline = time.perf_counter() + timeout  # the whole assignment's, all its jobs
        try:
            async with self.sem:
                for job in work.jobs:
                    left_s = deadline - time.perf_counter()
                    fault, reply = await self.job(name, job, base, limit, steps, left_s)
                    if fault is None:
                        ok += 1
                        shown = self.lang.shown(reply)
                        if len(shown) > self.cfg.result_chars:
                            cut = self.cfg.result_chars
                            shown = shown[:cut] + f"\n[result cut at {cut} chars]"
                        if job.item is not None:
                            self.values.setdefault(name, {})[job.item] = reply_value(reply)
                    else:
                        shown = self.error(name, fault, ORCHESTRATOR, base + steps[0]).content
                    lines.append((self.lang.label(job, name), shown))
        except asyncio.CancelledError:
            self.emit(name, "error", {"error": "cancelled"}, ORCHESTRATOR, base + steps[0])
            self.emit(
                name, "finish", {"stage": stage, "steps": steps[0], "status": "cancelled"}, ORCHESTRATOR
            )
            raise
        n = steps[0]
        if own:
            r.own_steps += n
        else:
            r.subagent_steps += n
            r.completed_assignments += ok == len(work.jobs)
        msg = Message("tool", result_text(name, lines))
        status = "ok" if ok == len(work.jobs) else "error"
        finish = {"stage": stage, "steps": n, "status": status, "result": preview(msg.content)}
        self.emit(name, "finish", finish, ORCHESTRATOR, base + n)
        return msg, n

    async def job(
        self, name: str, job: Job, base: int, limit: int, steps: list[int], timeout: float
    ) -> tuple[str | None, str]:
        """One job of a lane: (fault or None, the worker's reply)."""
        who = "your own work" if name == SELF else f"sub-agent {name}"
        left = min(self.cfg.max_subagent_steps, limit - steps[0])
        if left < 1:
            return f"{who}: no critical steps left for this item", ""
        if timeout <= 0:
            return f"{who}: no time left for this item", ""
        try:
            reply = await _bounded(
                self.subagent_loop(name, job.prompt, base + steps[0], left, steps), timeout
            )
            return None, reply
        except asyncio.TimeoutError:
            return f"{who} timed out after {timeout:g}s", ""
        except Fault as exn:
            return f"{who}: {exn}", ""
        except asyncio.CancelledError:
            raise
        except Exception as exn:
            return f"{who} failed: {type(exn).__name__}: {exn}", ""

    async def subagent_loop(self, name: str, prompt: str, base: int, limit: int, steps: list[int]) -> str:
        """A worker's loop over the environment's tools, at most ``limit`` steps from ``base``."""
        cfg, tools = self.cfg, self.env_tools
        system = subagent_system(self.agents.get(name, ""), tools)
        messages = [Message("system", system), Message("user", prompt)]
        taken = 0
        while True:
            if taken >= limit:
                raise Fault(f"used its {limit} steps without a final result")
            taken += 1
            steps[0] += 1
            step = base + taken
            try:
                raw = await _within(self.sub.act(list(messages), tools, "subagent"), cfg.step_timeout_s)
            except asyncio.TimeoutError:
                raise Fault(f"step {taken} timed out after {cfg.step_timeout_s:g}s") from None
            turn = check_turn(raw)
            messages.append(turn.message)
            if not turn.finished:
                self.r.truncated_turns += 1
                raise Fault("its turn was cut off by the token budget")
            if not turn.message.tool_calls and not turn.errors:
                return turn.message.content
            results = [self.error(name, e, ORCHESTRATOR, step) for e in turn.errors]
            for nth, c in self.numbered(turn.message.tool_calls, "subagent"):
                results.append(await self.env_tool(name, ORCHESTRATOR, c, nth, step))
            messages.extend(results)
            bound_context(messages, cfg.subagent_context_chars)
