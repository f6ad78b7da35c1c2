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

Sub-agents are stateless workers (``kimi_lab.swarm.lanes``): each job starts from the
sub-agent's system prompt and the job's prompt, runs its own loop over the environment's
tools with a bounded context (old tool results are cut first) and a bounded number of steps.

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
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kimi_lab.chat_format import Message, ToolCall, extract_answer
from kimi_lab.config.swarm import SwarmConfig
from kimi_lab.swarm.actions import SELF, Work, actions_for, is_agent_name, question
from kimi_lab.swarm.calls import Fault, check_turn
from kimi_lab.swarm.lanes import Lanes, _bounded
from kimi_lab.swarm.prompts import (
    ASSIGN_TASK,
    CREATE_SUBAGENT,
    ORCHESTRATOR,
    SOLVE,
    orchestrator_system,
    orchestrator_tools,
)
from kimi_lab.swarm.result import EpisodeResult
from kimi_lab.swarm.trace import TraceWriter, preview
from kimi_lab.swarm.types import Environment, Policy, SwarmTask, Turn


class _Episode(Lanes):
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

    def remaining_s(self) -> float:
        if self.cfg.max_episode_s is None:
            return float("inf")
        return self.cfg.max_episode_s - (time.perf_counter() - self.t0)

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
