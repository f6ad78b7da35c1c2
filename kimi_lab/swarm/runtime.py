"""The agent-swarm runtime: an orchestrator that creates sub-agents and runs them concurrently.

One episode is one asyncio coroutine. The orchestrator sees the task's question and
its tools: ``create_subagent`` (``{"name", "system_prompt"}``), ``assign_task``
(``{"agent", "prompt"}``) and the environment's own tools. Every ``assign_task`` of
one orchestrator turn runs concurrently as one *stage*; each returns one tool message
holding only that sub-agent's final text ("context sharding"). The orchestrator ends
the episode with a turn without tool calls (its ``Answer: ...`` line is the answer).

Sub-agents are stateless workers: each assignment starts from the sub-agent's system
prompt and the assigned prompt, runs its own loop over the environment's tools with a
bounded context (old tool results are cut first) and a bounded number of steps.

Step accounting (K2.5's critical steps): each orchestrator turn costs 1; a turn that
launched a stage costs 1 + the most steps any of its sub-agents took. Budgets are
counted in critical steps; the runtime reserves one step after each stage for the
orchestrator to answer. Every fault of a sub-agent (its policy raised, hung past a
timeout, returned something that is not a Turn, used up its steps) and every
malformed orchestrator call becomes an ``error: ...`` tool message and an ``error``
trace event; a fault of the orchestrator's own policy ends the episode
(``EpisodeResult.failure``). Nothing waits forever: every policy call is bounded.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from kimi_lab import metrics as M
from kimi_lab.chat import CALL_BEGIN, CALL_END, Message, ToolCall, extract_answer
from kimi_lab.swarm.trace import TraceWriter, preview
from kimi_lab.swarm.types import Environment, Policy, SwarmTask, ToolSpec, Turn

ORCHESTRATOR = M.SWARM_ORCHESTRATOR
CREATE_SUBAGENT = "create_subagent"
ASSIGN_TASK = "assign_task"

CREATE_SPEC = ToolSpec(
    CREATE_SUBAGENT,
    "create a sub-agent with its own system prompt; give it work with assign_task",
    '{"name": NAME, "system_prompt": TEXT}',
)
ASSIGN_SPEC = ToolSpec(
    ASSIGN_TASK,
    "run a task on a sub-agent; the assign_task calls of one turn run concurrently, "
    "each returns only that sub-agent's final result",
    '{"agent": NAME, "prompt": TEXT}',
)
SWARM_TOOLS = (CREATE_SPEC, ASSIGN_SPEC)

ORCHESTRATOR_PROMPT = (
    "You are the orchestrator of a swarm of sub-agents. Split the task into independent "
    "sub-tasks, create sub-agents and assign them the sub-tasks (assignments in one turn run "
    "in parallel), or use the tools yourself. When you know the answer, reply without tool "
    "calls and end with a line 'Answer: ...'."
)
SUBAGENT_PROMPT = "You are a sub-agent. Solve the assigned task with the tools; reply with only your result."
SINGLE_AGENT_PROMPT = (
    "Solve the task with the tools. When you know the answer, reply without tool calls and "
    "end with a line 'Answer: ...'."
)

# Sub-agent names are trace lanes and tool arguments: short identifiers.
_AGENT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
_CANCEL_GRACE_S = 1.0  # how long a cancelled policy call may take to unwind before it is left behind

T = TypeVar("T")


def render_tools(tools: list[ToolSpec] | tuple[ToolSpec, ...]) -> str:
    """The tool list of a system prompt."""
    lines = [f"Call a tool as {CALL_BEGIN}NAME\\nINPUT{CALL_END}. Tools:"]
    lines += [f"- {t.name}: {t.description}. Input: {t.input_format}" for t in tools]
    return "\n".join(lines)


@dataclass
class SwarmConfig:
    max_orchestrator_steps: int = 32
    max_subagent_steps: int = 16  # per assignment
    max_critical_steps: int = 64
    max_subagents: int = 100  # create_subagent calls that succeed, per episode
    max_concurrency: int = 100  # sub-agents running at once (the rest of a stage waits)
    subagent_timeout_s: float = 600.0  # one assignment, wall clock
    step_timeout_s: float = 120.0  # one policy call, any agent
    subagent_context_chars: int = 32_000  # a sub-agent's context; older tool results are cut past it
    result_chars: int = 4_000  # a sub-agent's result as the orchestrator reads it
    max_episode_s: float | None = None  # wall clock for the whole episode
    single_agent: bool = False  # no create_subagent / assign_task: the orchestrator works alone
    # Environment calls one turn may make (None: any); the rest are refused with an error.
    # Budgets that count one call per step (swarm/tasks.py) only bind with 1.
    max_env_calls_per_turn: int | None = None
    # env.call in a worker thread: for environments that block (disk, network). In-memory
    # environments are faster called inline, and then a slow call delays the event loop.
    env_in_thread: bool = False

    def __post_init__(self) -> None:
        for name in (
            "max_orchestrator_steps",
            "max_subagent_steps",
            "max_critical_steps",
            "max_concurrency",
            "subagent_context_chars",
            "result_chars",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"SwarmConfig.{name} must be >= 1 (got {getattr(self, name)})")
        if self.max_subagents < 0:
            raise ValueError(f"SwarmConfig.max_subagents must be >= 0 (got {self.max_subagents})")
        for name in ("subagent_timeout_s", "step_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SwarmConfig.{name} must be > 0 (got {getattr(self, name)})")
        if self.max_env_calls_per_turn is not None and self.max_env_calls_per_turn < 1:
            raise ValueError(
                f"SwarmConfig.max_env_calls_per_turn must be >= 1 or None (got {self.max_env_calls_per_turn})"
            )
        if self.max_episode_s is not None and not self.max_episode_s > 0:
            raise ValueError(f"SwarmConfig.max_episode_s must be > 0 or None (got {self.max_episode_s})")


@dataclass(repr=False)
class EpisodeResult:
    task_id: str
    final_text: str = ""  # the orchestrator's final turn ("" when it never gave one)
    answer: str | None = None  # its Answer: line
    finished: bool = False  # the orchestrator ended the episode itself
    critical_steps: int = 0
    total_steps: int = 0  # every agent's steps
    orchestrator_steps: int = 0
    subagent_steps: int = 0
    subagents_spawned: int = 0
    assignments: int = 0  # sub-agent runs launched
    completed_assignments: int = 0  # ... that returned a result (not an error)
    stages: int = 0
    stage_widths: list[int] = field(default_factory=list)  # assignments per stage
    stage_steps: list[int] = field(default_factory=list)  # the most sub-agent steps per stage
    parallelism: float = 0.0  # mean assignments per stage
    max_parallelism: int = 0
    tool_calls: int = 0  # environment tool calls, all agents
    errors: int = 0  # error observations, all agents, and orchestrator faults
    budget_exceeded: str | None = None  # "orchestrator_steps" | "critical_steps" | "time"
    failure: str | None = None  # the orchestrator's policy failed (raised, timed out, garbage)
    truncated: bool = False  # the orchestrator's last turn was cut by its token budget
    wall_s: float = 0.0
    reward: dict[str, float] | None = None
    # For training the orchestrator: its turns (tokens, logprobs for trainable policies) and
    # the messages each was sampled after. Sub-agents' turns are observations, never kept.
    orchestrator_turns: list[Turn] = field(default_factory=list)
    orchestrator_contexts: list[list[Message]] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)  # the orchestrator's whole conversation

    def summary(self) -> dict[str, Any]:
        """The scalar fields, for logs and JSON."""
        skip = {"orchestrator_turns", "orchestrator_contexts", "messages"}
        return {k: v for k, v in self.__dict__.items() if k not in skip}

    def __repr__(self) -> str:
        # short: asyncio formats a finished task's result into some messages, and a
        # swarm's full conversation can be megabytes
        keys = ("task_id", "answer", "critical_steps", "total_steps", "stages", "budget_exceeded", "failure")
        return "EpisodeResult(" + ", ".join(f"{k}={getattr(self, k)!r}" for k in keys) + ")"


class _Fault(Exception):
    """A sub-agent's failure, told to the orchestrator as its result."""


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


def _check_turn(raw: Any) -> Turn:
    """``raw`` if it is a well-formed assistant Turn, else _Fault."""
    if not isinstance(raw, Turn):
        raise _Fault(f"the policy returned {type(raw).__name__}, not a Turn")
    m = raw.message
    if not isinstance(m, Message) or m.role != "assistant" or not isinstance(m.content, str):
        raise _Fault(f"the policy's turn holds no assistant message ({preview(repr(m), 80)})")
    if not isinstance(m.tool_calls, list) or not all(
        isinstance(c, ToolCall) and isinstance(c.name, str) and isinstance(c.input, str) for c in m.tool_calls
    ):
        raise _Fault("the policy's turn holds malformed tool calls")
    if not isinstance(raw.errors, list):
        raise _Fault("the policy's turn holds malformed errors")
    return raw


def _json_object(text: str, keys: tuple[str, ...], tool: str) -> dict[str, str] | str:
    """The call's JSON object with string ``keys``, or the error text."""
    want = "{" + ", ".join(f'"{k}": ...' for k in keys) + "}"
    try:
        d = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return f"{tool} takes a JSON object {want} (got {preview(text, 80)!r})"
    if not isinstance(d, dict) or not all(isinstance(d.get(k), str) for k in keys):
        return f"{tool} takes a JSON object {want} with text values (got {preview(text, 80)!r})"
    return d


def _bound_context(messages: list[Message], limit: int, first: int = 2) -> None:
    """Cut the oldest tool results (from index ``first``) until the context holds <= ``limit`` chars.

    Cut messages are replaced, never edited: contexts handed to a policy earlier keep theirs.
    """
    total = sum(len(m.content) + sum(len(c.input) for c in m.tool_calls) for m in messages)
    for i in range(first, len(messages)):
        if total <= limit:
            return
        m = messages[i]
        if m.role != "tool" or m.content.startswith("[cut:"):
            continue
        note = f"[cut: an older tool result of {len(m.content)} chars]"
        total += len(note) - len(m.content)
        messages[i] = Message("tool", note)


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
        self.r = EpisodeResult(task.id)
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

    def env_call_refused(self, n: int) -> str | None:
        """Why the turn's ``n``-th environment call (from 1) is refused, if it is."""
        most = self.cfg.max_env_calls_per_turn
        if most is not None and n > most:
            return f"at most {most} environment tool call(s) per turn; this one was not run"
        return None

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
        intro = SINGLE_AGENT_PROMPT if cfg.single_agent else ORCHESTRATOR_PROMPT
        messages = [
            Message("system", intro + "\n\n" + render_tools(tools)),
            Message("user", self.task.question),
        ]
        r.messages = messages
        self.emit(ORCHESTRATOR, "message", {"role": "user", "text": preview(self.task.question)})
        while True:
            if r.orchestrator_steps >= cfg.max_orchestrator_steps:
                r.budget_exceeded = "orchestrator_steps"
                return
            if r.critical_steps + 1 > cfg.max_critical_steps:
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
                turn = _check_turn(raw)
            except asyncio.TimeoutError:
                if left < cfg.step_timeout_s:  # cut by the episode's clock, not the step's
                    r.budget_exceeded = "time"
                    return
                r.failure = f"the orchestrator's step {r.orchestrator_steps} timed out"
                self.error(ORCHESTRATOR, r.failure)
                return
            except _Fault as exn:
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
        d = _json_object(text, ("name", "system_prompt"), CREATE_SUBAGENT)
        if isinstance(d, str):
            return self.error(ORCHESTRATOR, d)
        name = d["name"]
        if not _AGENT_NAME.fullmatch(name) or name == ORCHESTRATOR:
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
        env_calls = 0
        base = r.critical_steps  # the orchestrator's turn included
        # one step is kept for the orchestrator's answer after the stage
        limit = min(cfg.max_subagent_steps, cfg.max_critical_steps - base - 1)
        for i, c in enumerate(calls):
            if c.name == CREATE_SUBAGENT and not cfg.single_agent:
                slots[i] = self.create(c.input)
            elif c.name == ASSIGN_TASK and not cfg.single_agent:
                d = _json_object(c.input, ("agent", "prompt"), ASSIGN_TASK)
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
            elif c.name in self.env_names:
                env_calls += 1
                refused = self.env_call_refused(env_calls)
                if refused:
                    slots[i] = self.error(ORCHESTRATOR, refused)
                else:
                    slots[i] = await self.env_call(ORCHESTRATOR, None, c, None)
            else:
                slots[i] = self.error(
                    ORCHESTRATOR,
                    f"unknown tool {preview(c.name, 40)!r} (tools: {', '.join(sorted(self._tool_names()))})",
                )
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

    def _tool_names(self) -> set[str]:
        return self.env_names | (set() if self.cfg.single_agent else {CREATE_SUBAGENT, ASSIGN_TASK})

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
        except _Fault as exn:
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
        system = (self.agents[name] or SUBAGENT_PROMPT) + "\n\n" + render_tools(tools)
        messages = [Message("system", system), Message("user", prompt)]
        while True:
            if steps[0] >= limit:
                raise _Fault(f"used its {limit} steps without a final result")
            steps[0] += 1
            step = base + steps[0]
            try:
                raw = await _within(self.sub.act(list(messages), tools, "subagent"), cfg.step_timeout_s)
            except asyncio.TimeoutError:
                raise _Fault(f"step {steps[0]} timed out after {cfg.step_timeout_s:g}s") from None
            turn = _check_turn(raw)
            messages.append(turn.message)
            if not turn.finished:
                raise _Fault("its turn was cut off by the token budget")
            if not turn.message.tool_calls and not turn.errors:
                return turn.message.content
            results = [self.error(name, e, ORCHESTRATOR, step) for e in turn.errors]
            env_calls = 0
            for c in turn.message.tool_calls:
                if c.name in self.env_names:
                    env_calls += 1
                    refused = self.env_call_refused(env_calls)
                    if refused:
                        results.append(self.error(name, refused, ORCHESTRATOR, step))
                    else:
                        results.append(await self.env_call(name, ORCHESTRATOR, c, step))
                else:
                    known = ", ".join(sorted(self.env_names))
                    results.append(
                        self.error(
                            name, f"unknown tool {preview(c.name, 40)!r} (tools: {known})", ORCHESTRATOR, step
                        )
                    )
            messages.extend(results)
            _bound_context(messages, cfg.subagent_context_chars)

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
