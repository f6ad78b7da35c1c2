"""The agent-swarm runtime: one episode's state machine, an orchestrator running sub-agents concurrently.

One episode is one asyncio coroutine. The orchestrator sees the task's question and
its tools (``kimi_lab.swarm.prompts``): ``create_subagent``, ``assign_task`` and the
environment's own tools. Every ``assign_task`` of one orchestrator turn runs
concurrently as one *stage*; each returns one tool message holding only that
sub-agent's final text ("context sharding"). The orchestrator ends the episode with
a turn without tool calls (its ``Answer: ...`` line is the answer).

Sub-agents are stateless workers: each assignment starts from the sub-agent's system
prompt and the assigned prompt, runs its own loop over the environment's tools with a
bounded context (old tool results are cut first) and a bounded number of steps.

Step accounting (K2.5's critical steps): each orchestrator turn costs 1; a turn that
launched a stage costs 1 + the most steps any of its sub-agents took. Budgets
(``kimi_lab.config.swarm.SwarmConfig``) are counted in critical steps; the runtime
reserves one step after each stage for the orchestrator to answer. Every fault of a
sub-agent (its policy raised, hung past a timeout, returned something that is not a
Turn, used up its steps) and every malformed orchestrator call becomes an ``error:
...`` tool message and an ``error`` trace event; a fault of the orchestrator's own
policy ends the episode (``EpisodeResult.failure``). Nothing waits forever: every
policy call is bounded.
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
from kimi_lab.swarm.calls import AGENT_NAME, Fault, bound_context, check_turn, json_args
from kimi_lab.swarm.prompts import (
    ASSIGN_TASK,
    CREATE_SUBAGENT,
    ORCHESTRATOR,
    SWARM_TOOLS,
    orchestrator_system,
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
        self.env_tools = list(env.tools)
        self.env_names = {t.name for t in self.env_tools}
        self.agents: dict[str, str] = {}  # name -> system prompt
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
        """The tools ``agent`` may call: the environment's, and the swarm's for the orchestrator."""
        if agent == ORCHESTRATOR and not self.cfg.single_agent:
            return self.env_names | {CREATE_SUBAGENT, ASSIGN_TASK}
        return self.env_names

    def numbered(self, calls: list[ToolCall]) -> Iterator[tuple[int, ToolCall]]:
        """A turn's calls, each with its index among the turn's environment calls (from 1; 0: not one)."""
        n = 0
        for c in calls:
            n += c.name in self.env_names
            yield (n if c.name in self.env_names else 0), c

    async def env_tool(
        self, agent: str, parent: str | None, call: ToolCall, nth: int, step: int | None
    ) -> Message:
        """Any agent's call of an environment tool (the ``nth`` of its turn), or of a tool it lacks."""
        if nth == 0:
            known = ", ".join(sorted(self.tool_names(agent)))
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
        tools = self.env_tools + ([] if cfg.single_agent else list(SWARM_TOOLS))
        messages = [
            Message("system", orchestrator_system(self.env_tools, cfg.single_agent)),
            Message("user", self.task.question),
        ]
        r.messages = messages
        self.emit(ORCHESTRATOR, "message", {"role": "user", "text": preview(self.task.question)})
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
                    self.orch.act(context, tools, ORCHESTRATOR), min(cfg.step_timeout_s, left)
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
            if turn.message.content:
                self.emit(
                    ORCHESTRATOR, "message", {"role": "assistant", "text": preview(turn.message.content)}
                )
            if not turn.finished:
                r.truncated = True
                return
            if not turn.message.tool_calls and not turn.errors:
                r.final_text = turn.message.content
                r.answer = extract_answer(r.final_text)
                r.finished = True
                return
            messages.extend(await self.orchestrator_tools(turn))

    def create(self, text: str) -> Message:
        d = json_args(text, ("name", "system_prompt"), CREATE_SUBAGENT)
        if isinstance(d, str):
            return self.error(ORCHESTRATOR, d)
        name = d["name"]
        if not AGENT_NAME.fullmatch(name) or name == ORCHESTRATOR:
            return self.error(
                ORCHESTRATOR, f"bad sub-agent name {preview(name, 40)!r} (letters, digits, _ . -)"
            )
        if name in self.agents:
            return self.error(ORCHESTRATOR, f"a sub-agent named {name!r} exists already")
        if len(self.agents) >= self.cfg.max_subagents:
            return self.error(ORCHESTRATOR, f"the swarm has its {self.cfg.max_subagents} sub-agents already")
        self.agents[name] = d["system_prompt"]
        self.r.subagents_spawned += 1
        self.emit(ORCHESTRATOR, "spawn", {"name": name, "system_prompt": preview(d["system_prompt"])})
        return Message("tool", f"created sub-agent {name}")

    async def orchestrator_tools(self, turn: Turn) -> list[Message]:
        """One tool message per malformed call, then one per call, in order."""
        cfg, r = self.cfg, self.r
        out = [self.error(ORCHESTRATOR, f"{e}") for e in turn.errors]
        calls = turn.message.tool_calls
        slots: list[Message | None] = [None] * len(calls)
        launches: list[tuple[int, str, str]] = []  # (slot, agent, prompt)
        launched: set[str] = set()
        base = r.critical_steps  # the orchestrator's turn included
        # one step is kept for the orchestrator's answer after the stage
        limit = min(cfg.max_subagent_steps, r.budget - base - 1)
        swarm = not cfg.single_agent
        for i, (nth, c) in enumerate(self.numbered(calls)):
            if c.name == CREATE_SUBAGENT and swarm:
                slots[i] = self.create(c.input)
            elif c.name == ASSIGN_TASK and swarm:
                d = json_args(c.input, ("agent", "prompt"), ASSIGN_TASK)
                if isinstance(d, str):
                    slots[i] = self.error(ORCHESTRATOR, d)
                elif d["agent"] not in self.agents:
                    known = ", ".join(sorted(self.agents)[:20]) or "none yet: create_subagent first"
                    slots[i] = self.error(ORCHESTRATOR, f"no sub-agent {preview(d['agent'], 40)!r} ({known})")
                elif d["agent"] in launched:
                    slots[i] = self.error(ORCHESTRATOR, f"{d['agent']!r} is assigned twice in one turn")
                elif limit < 1:
                    slots[i] = self.error(ORCHESTRATOR, "no critical steps left for a sub-agent")
                else:
                    launches.append((i, d["agent"], d["prompt"]))
                    launched.add(d["agent"])
            else:
                slots[i] = await self.env_tool(ORCHESTRATOR, None, c, nth, None)
        if launches:
            stage = r.stages
            r.stages += 1
            timeout = min(cfg.subagent_timeout_s, self.remaining_s())
            results = await asyncio.gather(
                *(self.subagent(name, prompt, stage, base, limit, timeout) for _, name, prompt in launches)
            )
            for (slot, _, _), (msg, _) in zip(launches, results):
                slots[slot] = msg
            most = max(steps for _, steps in results)
            r.critical_steps += most
            r.stage_widths.append(len(launches))
            r.stage_steps.append(most)
        return out + [m for m in slots if m is not None]

    # ---------------------------------------------------------------- sub-agents
    async def subagent(
        self, name: str, prompt: str, stage: int, base: int, limit: int, timeout: float
    ) -> tuple[Message, int]:
        """Run one assignment: (the tool message for the orchestrator, steps taken)."""
        r = self.r
        r.assignments += 1
        self.emit(name, "assign", {"stage": stage, "prompt": preview(prompt)}, ORCHESTRATOR, base)
        steps = [0]  # the loop counts here, so a timed-out run still reports its steps
        fault: str | None = None
        try:
            async with self.sem:
                text = await _bounded(self.subagent_loop(name, prompt, base, limit, steps), timeout)
        except asyncio.CancelledError:
            self.emit(name, "error", {"error": "cancelled"}, ORCHESTRATOR, base + steps[0])
            self.emit(
                name, "finish", {"stage": stage, "steps": steps[0], "status": "cancelled"}, ORCHESTRATOR
            )
            raise
        except asyncio.TimeoutError:
            fault = f"sub-agent {name} timed out after {timeout:g}s"
        except Fault as exn:
            fault = f"sub-agent {name}: {exn}"
        except Exception as exn:
            fault = f"sub-agent {name} failed: {type(exn).__name__}: {exn}"
        n = steps[0]
        r.subagent_steps += n
        if fault is not None:
            msg = self.error(name, fault, ORCHESTRATOR, base + n)
        else:
            r.completed_assignments += 1
            if len(text) > self.cfg.result_chars:
                text = text[: self.cfg.result_chars] + f"\n[result cut at {self.cfg.result_chars} chars]"
            msg = Message("tool", text)
        detail = {"stage": stage, "steps": n, "status": "ok" if fault is None else "error"}
        if fault is None:
            detail["result"] = preview(msg.content)
        self.emit(name, "finish", detail, ORCHESTRATOR, base + n)
        return msg, n

    async def subagent_loop(self, name: str, prompt: str, base: int, limit: int, steps: list[int]) -> str:
        cfg, tools = self.cfg, self.env_tools
        system = subagent_system(self.agents[name], tools)
        messages = [Message("system", system), Message("user", prompt)]
        while True:
            if steps[0] >= limit:
                raise Fault(f"used its {limit} steps without a final result")
            steps[0] += 1
            step = base + steps[0]
            try:
                raw = await _within(self.sub.act(list(messages), tools, "subagent"), cfg.step_timeout_s)
            except asyncio.TimeoutError:
                raise Fault(f"step {steps[0]} timed out after {cfg.step_timeout_s:g}s") from None
            turn = check_turn(raw)
            messages.append(turn.message)
            if not turn.finished:
                raise Fault("its turn was cut off by the token budget")
            if not turn.message.tool_calls and not turn.errors:
                return turn.message.content
            results = [self.error(name, e, ORCHESTRATOR, step) for e in turn.errors]
            for nth, c in self.numbered(turn.message.tool_calls):
                results.append(await self.env_tool(name, ORCHESTRATOR, c, nth, step))
            messages.extend(results)
            bound_context(messages, cfg.subagent_context_chars)

    # ---------------------------------------------------------------- end
    def finish(self, reward: Callable[[SwarmTask, EpisodeResult], dict[str, float]] | None) -> None:
        r = self.r
        r.total_steps = r.orchestrator_steps + r.subagent_steps
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
