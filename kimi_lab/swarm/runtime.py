"""The agent-swarm runtime: one episode's state machine, an orchestrator running sub-agents concurrently.

One episode is one asyncio coroutine. The orchestrator sees the task's question and
its tools, in one of two action languages (``kimi_lab.swarm.actions``: items by
number, the default, or free text): ``create_subagent``, ``assign_task`` and
``solve`` (its own work), or the free form's ``create_subagent``, ``assign_task`` and
the environment's tools. Every assignment of one orchestrator turn (and its own
``solve`` work) runs concurrently as one *stage*, each lane doing its jobs one after
another; each returns one tool message holding only the results ("context
sharding"). The orchestrator ends the episode with a turn without tool calls (its
``Answer: ...`` line, rendered to the task's form in the index language, is scored).

Sub-agents are stateless workers: each job starts from the sub-agent's system prompt
and the job's prompt, runs its own loop over the environment's tools with a bounded
context (old tool results are cut first) and a bounded number of steps.

Step accounting (K2.5's critical steps): each orchestrator turn costs 1; a turn that
launched a stage costs 1 + the most steps any of its lanes took. Budgets
(``kimi_lab.config.swarm.SwarmConfig``) are counted in critical steps; the runtime
reserves one step after each stage for the orchestrator to answer, except for its own
work, which may spend them all (and then ends the episode over budget, as a single
agent's work does). Every fault of a sub-agent (its policy raised, hung past a
timeout, returned something that is not a Turn, used up its steps) and every
malformed orchestrator call becomes an ``error: ...`` tool message and an ``error``
trace event; a fault of the orchestrator's own policy ends the episode
(``EpisodeResult.failure``). Nothing waits forever: every policy call is bounded.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from kimi_lab.chat import Message, ToolCall, extract_answer
from kimi_lab.config.swarm import SwarmConfig
from kimi_lab.swarm.actions import (
    SELF,
    Job,
    Work,
    actions_for,
    is_agent_name,
    question,
    reply_value,
    result_text,
)
from kimi_lab.swarm.calls import Fault, bound_context, check_turn
from kimi_lab.swarm.prompts import (
    ASSIGN_TASK,
    CREATE_SUBAGENT,
    ORCHESTRATOR,
    SOLVE,
    orchestrator_system,
    orchestrator_tools,
    subagent_system,
)
from kimi_lab.swarm.result import EpisodeResult
from kimi_lab.swarm.trace import TraceWriter, preview
from kimi_lab.swarm.types import Environment, Policy, SwarmTask, Turn

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


class _Episode:
    def __init__(
        self,
        task: SwarmTask,
        env: Environment,
        orchestrator: Policy,
        subagent: Policy,
        cfg: SwarmConfig,
        trace: TraceWriter | None,
    ) -> None:
        self.task, self.env, self.orch, self.sub, self.cfg, self.trace = (
            task,
            env,
            orchestrator,
            subagent,
            cfg,
            trace,
        )
        self.r = EpisodeResult(task.id, budget=cfg.critical_budget(task))
        self.lang = actions_for(task, cfg.actions)
        self.env_tools = list(env.tools)
        self.env_names = {t.name for t in self.env_tools}
        self.tools = orchestrator_tools(self.env_tools, cfg.actions, cfg.single_agent)
        self.agents: dict[str, str] = {}  # name -> system prompt
        # what each lane's work returned, per item (the index language's answer refers to it)
        self.values: dict[str, dict[int, str]] = {}
        self.sem = asyncio.Semaphore(cfg.max_concurrency)
        self.t0 = time.perf_counter()

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

    def remaining_s(self) -> float:
        if self.cfg.max_episode_s is None:
            return float("inf")
        return self.cfg.max_episode_s - (time.perf_counter() - self.t0)

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

    # ---------------------------------------------------------------- orchestrator
    async def run(self) -> None:
        cfg, r = self.cfg, self.r
        ask = question(self.task, self.lang.name)
        messages = [
            Message("system", orchestrator_system(self.env_tools, cfg.single_agent, cfg.actions)),
            Message("user", ask),
        ]
        r.messages = messages
        self.emit(ORCHESTRATOR, "message", {"role": "user", "text": preview(ask)})
        while True:
            if r.orchestrator_steps >= cfg.max_orchestrator_steps:
                r.budget_exceeded = "orchestrator_steps"
                return
            if r.critical_steps + 1 > r.budget:
                r.budget_exceeded = "critical_steps"
                return
            left = self.remaining_s()
            if left <= 0:
                r.budget_exceeded = "time"
                return
            context = list(messages)
            r.orchestrator_steps += 1
            r.critical_steps += 1
            try:
                raw = await _bounded(
                    self.orch.act(context, self.tools, ORCHESTRATOR), min(cfg.step_timeout_s, left)
                )
                turn = check_turn(raw)
            except asyncio.TimeoutError:
                if left < cfg.step_timeout_s:  # cut by the episode's clock, not the step's
                    r.budget_exceeded = "time"
                    return
                r.failure = f"the orchestrator's step {r.orchestrator_steps} timed out"
                self.error(ORCHESTRATOR, r.failure)
                return
            except Fault as exn:
                r.failure = f"orchestrator: {exn}"
                self.error(ORCHESTRATOR, r.failure)
                return
            except Exception as exn:
                r.failure = f"the orchestrator's policy raised {type(exn).__name__}: {exn}"
                self.error(ORCHESTRATOR, r.failure)
                return
            r.orchestrator_turns.append(turn)
            r.orchestrator_contexts.append(context)
            messages.append(turn.message)
            # one event per turn, at the step it took: the dashboard's critical-step time axis
            detail = {"role": "assistant", "text": preview(turn.message.content)}
            self.emit(ORCHESTRATOR, "message", {**detail, "calls": len(turn.message.tool_calls)})
            if not turn.finished:
                r.truncated = True
                r.truncated_turns += 1
                return
            if not turn.message.tool_calls and not turn.errors:
                r.final_text = turn.message.content
                r.answer_text = self.lang.render_answer(r.final_text, self.values)
                r.answer = extract_answer(r.answer_text)
                r.finished = True
                return
            messages.extend(await self.orchestrator_tools(turn))

    def create(self, text: str) -> Message:
        spawn = self.lang.create(text)
        if isinstance(spawn, str):
            return self.error(ORCHESTRATOR, spawn)
        name = spawn.name
        if not is_agent_name(name):
            return self.error(
                ORCHESTRATOR, f"bad sub-agent name {preview(name, 40)!r} (letters, digits, _ . -)"
            )
        if name in self.agents:
            return self.error(ORCHESTRATOR, f"a sub-agent named {name!r} exists already")
        if len(self.agents) >= self.cfg.max_subagents:
            return self.error(ORCHESTRATOR, f"the swarm has its {self.cfg.max_subagents} sub-agents already")
        self.agents[name] = spawn.system_prompt
        self.r.subagents_spawned += 1
        self.emit(ORCHESTRATOR, "spawn", {"name": name, "system_prompt": preview(spawn.system_prompt)})
        return Message("tool", f"created sub-agent {name}" if self.lang.name == "text" else "created")

    def check_work(self, call: ToolCall, launched: set[str], limit: int) -> Work | Message:
        """An assignment (or the orchestrator's own work) ready to run, or the error message."""
        work = self.lang.work(call.name, call.input)
        if isinstance(work, str):
            return self.error(ORCHESTRATOR, work)
        if work.agent != SELF and work.agent not in self.agents:
            known = ", ".join(sorted(self.agents)[:20]) or "none yet: create_subagent first"
            return self.error(ORCHESTRATOR, f"no sub-agent {preview(work.agent, 40)!r} ({known})")
        if work.agent in launched:
            who = "solve" if work.agent == SELF else repr(work.agent)
            return self.error(ORCHESTRATOR, f"{who} is given work twice in one turn")
        if limit < 1:
            return self.error(ORCHESTRATOR, "no critical steps left for this work")
        return work

    async def orchestrator_tools(self, turn: Turn) -> list[Message]:
        """One tool message per malformed call, then one per call, in order. The turn's assignments
        (and its own ``solve`` work) run concurrently as one stage."""
        cfg, r = self.cfg, self.r
        out = [self.error(ORCHESTRATOR, f"{e}") for e in turn.errors]
        calls = turn.message.tool_calls
        slots: list[Message | None] = [None] * len(calls)
        launches: list[tuple[int, Work]] = []
        launched: set[str] = set()
        base = r.critical_steps  # the orchestrator's turn included
        # one step is kept for the orchestrator's answer after the stage
        limit = min(cfg.max_subagent_steps, r.budget - base - 1)
        allowed = self.tool_names(ORCHESTRATOR)
        for i, (nth, c) in enumerate(self.numbered(calls, ORCHESTRATOR)):
            if c.name == CREATE_SUBAGENT and c.name in allowed:
                slots[i] = self.create(c.input)
            elif c.name in (ASSIGN_TASK, SOLVE) and c.name in allowed:
                work = self.check_work(c, launched, limit if c.name == ASSIGN_TASK else r.budget - base)
                if isinstance(work, Message):
                    slots[i] = work
                else:
                    launches.append((i, work))
                    launched.add(work.agent)
            else:
                slots[i] = await self.env_tool(ORCHESTRATOR, None, c, nth, None)
        if launches:
            stage = r.stages
            r.stages += 1
            timeout = min(cfg.subagent_timeout_s, self.remaining_s())
            results = await asyncio.gather(*(self.lane(w, stage, base, limit, timeout) for _, w in launches))
            for (slot, _), (msg, _) in zip(launches, results):
                slots[slot] = msg
            most = max(steps for _, steps in results)
            r.critical_steps += most
            delegated = [w for _, w in launches if w.agent != SELF]
            if delegated:
                r.stage_widths.append(len(delegated))
                r.stage_steps.append(max(s for (_, w), (_, s) in zip(launches, results) if w.agent != SELF))
        return out + [m for m in slots if m is not None]

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
        try:
            async with self.sem:
                for job in work.jobs:
                    fault, reply = await self.job(name, job, base, limit, steps, timeout)
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

    # ---------------------------------------------------------------- end
    def finish(self, reward: Callable[[SwarmTask, EpisodeResult], dict[str, float]] | None) -> None:
        r = self.r
        r.total_steps = r.orchestrator_steps + r.own_steps + r.subagent_steps
        r.parallelism = sum(r.stage_widths) / len(r.stage_widths) if r.stage_widths else 0.0
        r.max_parallelism = max(r.stage_widths, default=0)
        r.wall_s = time.perf_counter() - self.t0
        if reward is not None:
            try:
                r.reward = {str(k): float(v) for k, v in reward(self.task, r).items()}
            except Exception as exn:
                self.error(ORCHESTRATOR, f"the reward failed: {type(exn).__name__}: {exn}")
        detail: dict[str, Any] = {
            "stage": r.stages,
            "answer": r.answer,
            "critical_steps": r.critical_steps,
            "total_steps": r.total_steps,
            "budget_exceeded": r.budget_exceeded,
            "failure": r.failure,
        }
        if r.reward is not None:
            detail["reward"] = r.reward
        self.emit(ORCHESTRATOR, "finish", detail)


async def run_episode(
    task: SwarmTask,
    env: Environment,
    orchestrator: Policy,
    subagent: Policy,
    cfg: SwarmConfig | None = None,
    trace: TraceWriter | str | Path | None = None,
    reward: Callable[[SwarmTask, EpisodeResult], dict[str, float]] | None = None,
) -> EpisodeResult:
    """Play one episode. ``trace`` (a writer or a path) is closed when it ends, however it ends.

    ``reward(task, result)`` -> {component: value}, if given, is stored in the result and
    in the trace's final event.
    """
    cfg = cfg or SwarmConfig()
    writer = TraceWriter(trace) if isinstance(trace, (str, Path)) else trace
    if writer is not None:
        writer.start()
    ep = _Episode(task, env, orchestrator, subagent, cfg, writer)
    try:
        await ep.run()
    except asyncio.CancelledError:
        ep.r.failure = "cancelled"
        raise
    except Exception as exn:  # a bug below must still leave a result and a complete trace
        ep.r.failure = f"the runtime raised {type(exn).__name__}: {exn}"
        ep.error(ORCHESTRATOR, ep.r.failure)
    finally:
        try:
            ep.finish(None if ep.r.failure == "cancelled" else reward)
        finally:
            if writer is not None:
                writer.close()
    return ep.r


def run_episode_sync(
    task: SwarmTask,
    env: Environment,
    orchestrator: Policy,
    subagent: Policy,
    cfg: SwarmConfig | None = None,
    trace: TraceWriter | str | Path | None = None,
    reward: Callable[[SwarmTask, EpisodeResult], dict[str, float]] | None = None,
) -> EpisodeResult:
    """``run_episode`` in a fresh event loop (not from inside a running one)."""
    return asyncio.run(run_episode(task, env, orchestrator, subagent, cfg, trace, reward))
