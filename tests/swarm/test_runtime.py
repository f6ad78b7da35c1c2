"""The swarm runtime: step accounting, concurrency, budgets, faults, traces, and its benchmark.

Everything here runs on fake environments and fake tasks (no corpus), and on scripted
or simulated policies, so it is fast and independent of the task suite.
"""

from __future__ import annotations

import ast
import asyncio
import collections
import itertools
import json
import random
import time
from pathlib import Path
from typing import Any

import pytest

from kimi_lab import metrics as M
from kimi_lab.chat_format import Message, ToolCall
from kimi_lab.config.swarm import SwarmConfig
from kimi_lab.errors import ConfigError
from kimi_lab.swarm import lanes, runtime
from kimi_lab.swarm.prompts import ASSIGN_TASK, CREATE_SUBAGENT
from kimi_lab.swarm.result import EpisodeResult
from kimi_lab.swarm.scripted import FanOutPolicy, ScriptedSubagent, SimulatedPolicy, SingleAgentPolicy
from kimi_lab.swarm.trace import TraceWriter
from kimi_lab.swarm.types import SwarmTask, ToolSpec, Turn
from tests.conftest import REPO

ORCH = M.SWARM_ORCHESTRATOR


# The runtime's mechanics, in the free-text action language (the index language: test_actions.py).
def text_cfg(**kw: Any) -> SwarmConfig:
    return SwarmConfig(actions="text", **kw)


def run_episode_sync(task, env, orch, sub, cfg=None, trace=None, reward=None) -> EpisodeResult:
    return runtime.run_episode_sync(task, env, orch, sub, cfg or text_cfg(), trace, reward)


async def run_episode(task, env, orch, sub, cfg=None, trace=None, reward=None) -> EpisodeResult:
    return await runtime.run_episode(task, env, orch, sub, cfg or text_cfg(), trace, reward)


# ----------------------------------------------------------------------- fakes
class FakeEnv:
    def __init__(self, result_chars: int = 0) -> None:
        self.tools = [
            ToolSpec("search", "search the corpus", "a query"),
            ToolSpec("open", "open a page", "a page id"),
        ]
        self.calls: list[tuple[str, str]] = []
        self.result_chars = result_chars

    def call(self, name: str, tool_input: str) -> str:
        self.calls.append((name, tool_input))
        if name == "open" and tool_input == "crash":
            raise OSError("disk gone")
        return f"{name}({tool_input})" + "x" * self.result_chars


def make_task(calls_per_subtask: list[int], width: int | None = None, tid: str = "t") -> SwarmTask:
    subtasks = [
        {
            "prompt": f"find item {i}",
            "calls": [["search", f"q{i}.{j}"] for j in range(n)],
            "answer": f"a{i}",
        }
        for i, n in enumerate(calls_per_subtask)
    ]
    n = len(subtasks)
    return SwarmTask(
        tid,
        "wide",
        "find every item",
        [f"a{i}" for i in range(n)],
        n if width is None else width,
        {"subtasks": subtasks},
    )


def combine(task: SwarmTask, answers: list[str]) -> str:
    return "Answer: " + ", ".join(answers)


def turn(
    content: str = "", calls: list[tuple[str, str]] | None = None, errors: list[str] | None = None
) -> Turn:
    return Turn(Message("assistant", content, [ToolCall(n, i) for n, i in calls or []]), errors=errors or [])


class Scripted:
    """An orchestrator that plays a fixed list of turns, then answers."""

    name = "scripted-turns"

    def __init__(self, turns: list[Turn]) -> None:
        self.turns = turns
        self.seen: list[list[Message]] = []

    async def act(self, messages: list[Message], tools: list[ToolSpec], role: str) -> Turn:
        self.seen.append(messages)
        k = sum(m.role == "assistant" for m in messages)
        return self.turns[k] if k < len(self.turns) else turn("Answer: done")


def create(name: str, prompt: str = "help") -> tuple[str, str]:
    return CREATE_SUBAGENT, json.dumps({"name": name, "system_prompt": prompt})


def assign(agent: str, prompt: str) -> tuple[str, str]:
    return ASSIGN_TASK, json.dumps({"agent": agent, "prompt": prompt})


def read_trace(path: Path) -> list[dict[str, Any]]:
    events = [json.loads(line) for line in path.read_text().splitlines()]
    for e in events:
        assert set(e) == {"v", "t", "step", "agent", "kind", "parent", "detail"}, e
        assert e["v"] == M.SWARM_TRACE_VERSION and e["kind"] in M.SWARM_EVENT_KINDS, e
        assert (
            isinstance(e["t"], float | int) and isinstance(e["step"], int) and isinstance(e["detail"], dict)
        )
        assert e["parent"] in (None, ORCH)
    return events


def check_trace(path: Path, res: EpisodeResult, cfg: SwarmConfig) -> list[dict[str, Any]]:
    """A complete trace, consistent with the result and within every budget."""
    events = read_trace(path)
    assert events, path
    last = events[-1]
    assert (last["agent"], last["kind"]) == (ORCH, "finish"), last
    assert sum(e["agent"] == ORCH and e["kind"] == "finish" for e in events) == 1
    assert all(a["t"] <= b["t"] for a, b in itertools.pairwise(events))
    assert max(e["step"] for e in events) <= res.budget
    assert last["detail"]["critical_steps"] == res.critical_steps
    # every assignment ends with the sub-agent's finish, its steps inside the budget
    subs = [e for e in events if e["agent"] != ORCH]
    assigns = [e for e in subs if e["kind"] == "assign"]
    finishes = [e for e in subs if e["kind"] == "finish"]
    assert sorted((e["agent"], e["detail"]["stage"]) for e in assigns) == sorted(
        (e["agent"], e["detail"]["stage"]) for e in finishes
    )
    assert all(0 <= e["detail"]["steps"] <= cfg.max_subagent_steps for e in finishes)
    assert sum(e["detail"]["steps"] for e in finishes) == res.subagent_steps
    spawns = [e for e in events if e["kind"] == "spawn"]
    assert len(spawns) == res.subagents_spawned <= cfg.max_subagents
    return events


def check_budgets(res: EpisodeResult, cfg: SwarmConfig) -> None:
    assert res.critical_steps <= res.budget
    assert res.orchestrator_steps <= cfg.max_orchestrator_steps
    assert res.subagents_spawned <= cfg.max_subagents
    assert res.critical_steps == res.orchestrator_steps + sum(res.stage_steps)
    assert res.total_steps == res.orchestrator_steps + res.subagent_steps
    assert all(s <= cfg.max_subagent_steps for s in res.stage_steps)
    assert res.stages == len(res.stage_widths) == len(res.stage_steps)


def _dashboard_functions() -> dict[str, Any]:
    """load_trace and spans of the dashboard's swarm page, without running the Streamlit page."""
    path = REPO / "dashboards" / "views" / "swarm.py"
    tree = ast.parse(path.read_text())
    keep = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom | ast.FunctionDef)]
    keep = [n for n in keep if not (isinstance(n, ast.ImportFrom) and n.module == "dashboards.runs")]
    scope: dict[str, Any] = {}
    exec(compile(ast.Module(keep, []), str(path), "exec"), scope)
    return scope


# ----------------------------------------------------------------------- step accounting
@pytest.mark.parametrize("width", [2, 4, 8])
def test_critical_steps_grow_with_width_serially_and_stay_flat_fanned_out(width: int) -> None:
    task = make_task([2] * width)
    env = FakeEnv()
    single = run_episode_sync(
        task, env, SingleAgentPolicy(task, combine), ScriptedSubagent(task), text_cfg(single_agent=True)
    )
    # one tool call per step, then the answer
    assert single.critical_steps == single.orchestrator_steps == single.total_steps == 2 * width + 1
    assert single.stages == single.subagents_spawned == 0 and single.tool_calls == 2 * width
    assert single.answer == ", ".join(f"a{i}" for i in range(width)) and single.finished

    fan = run_episode_sync(task, FakeEnv(), FanOutPolicy(task, combine=combine), ScriptedSubagent(task))
    # create (1) + assign stage (1 + 2 calls + the sub-agent's answer) + answer (1)
    assert fan.critical_steps == 1 + (1 + 3) + 1 == 6
    assert fan.orchestrator_steps == 3 and fan.subagent_steps == 3 * width
    assert fan.total_steps == 3 + 3 * width
    assert fan.stages == 1 and fan.stage_widths == [width] and fan.stage_steps == [3]
    assert fan.parallelism == width == fan.max_parallelism
    assert fan.subagents_spawned == width and fan.completed_assignments == width == fan.assignments
    assert fan.answer == single.answer and fan.errors == 0 and fan.budget_exceeded is None


def test_a_stage_costs_its_slowest_subagent_and_batches_add_stages() -> None:
    task = make_task([1, 4, 0, 2])
    res = run_episode_sync(task, FakeEnv(), FanOutPolicy(task, combine=combine), ScriptedSubagent(task))
    assert res.stage_steps == [5] and res.critical_steps == 1 + 1 + 5 + 1
    assert res.subagent_steps == (1 + 1) + (4 + 1) + (0 + 1) + (2 + 1)

    res = run_episode_sync(
        task, FakeEnv(), FanOutPolicy(task, width=2, combine=combine), ScriptedSubagent(task)
    )
    # two stages of two: max(2, 5) and max(1, 3)
    assert res.stage_widths == [2, 2] and res.stage_steps == [5, 3]
    assert res.critical_steps == 1 + (1 + 5) + (1 + 3) + 1 and res.parallelism == 2.0
    assert res.subagents_spawned == 2 and res.answer == "a0, a1, a2, a3"


def test_orchestrator_turns_and_their_contexts_are_kept_for_training() -> None:
    task = make_task([1, 1])
    res = run_episode_sync(task, FakeEnv(), FanOutPolicy(task, combine=combine), ScriptedSubagent(task))
    assert len(res.orchestrator_turns) == len(res.orchestrator_contexts) == res.orchestrator_steps == 3
    for turn_, ctx in zip(res.orchestrator_turns, res.orchestrator_contexts):
        i = len(ctx)
        assert res.messages[:i] == ctx and res.messages[i] is turn_.message
    assert (
        res.orchestrator_contexts[0][0].role == "system"
        and "assign_task" in res.orchestrator_contexts[0][0].content
    )
    assert res.orchestrator_contexts[0][1] == Message("user", task.question)
    # each assignment came back as one tool message holding only the sub-agent's result, after its
    # name (so a value reads as it will in a NAME: VALUE answer)
    assert [m.content for m in res.messages if m.role == "tool"][-2:] == ["w1: a0", "w2: a1"]


def test_env_calls_per_turn_can_be_limited() -> None:
    sub = Scripted([turn(calls=[("search", "a"), ("open", "b")])])  # as a sub-agent: two calls, then done
    orch = Scripted(
        [turn(calls=[create("w"), ("search", "x"), ("search", "y")]), turn(calls=[assign("w", "go")])]
    )
    res = run_episode_sync(make_task([1]), FakeEnv(), orch, sub, text_cfg(max_env_calls_per_turn=1))
    tools = [m.content for m in res.messages if m.role == "tool"]
    assert tools[1] == "search(x)" and tools[2].startswith(
        "error: at most 1 environment tool call(s) per turn"
    )
    assert res.tool_calls == 2 and res.errors == 2 and sub.seen[1][-1].content.startswith("error: at most 1")


def test_single_agent_mode_has_no_swarm_tools() -> None:
    orch = Scripted([turn(calls=[create("w"), ("search", "x")])])
    res = run_episode_sync(make_task([1]), FakeEnv(), orch, SimulatedPolicy(), text_cfg(single_agent=True))
    tools = [m.content for m in res.messages if m.role == "tool"]
    assert tools[0].startswith("error: unknown tool 'create_subagent'") and tools[1] == "search(x)"
    assert res.subagents_spawned == 0 and "create_subagent" not in res.messages[0].content


def test_orchestrator_and_subagents_see_the_same_environment_dispatch() -> None:
    """One dispatch for every agent: the same calls give the same observations, whoever makes them."""
    calls = [("search", "x"), ("open", "crash"), ("fly", "away")]
    sub = Scripted([turn(calls=calls)])
    orch = Scripted([turn(calls=[*calls, create("w")]), turn(calls=[assign("w", "go")])])
    run_episode_sync(make_task([1]), FakeEnv(), orch, sub, text_cfg(max_env_calls_per_turn=None))
    by_orch = [m.content for m in orch.seen[1][-4:-1]]
    by_sub = [m.content for m in sub.seen[1][-3:]]
    assert by_orch[0] == by_sub[0] == "search(x)"
    assert by_orch[1] == by_sub[1] and by_orch[1].startswith("error: open failed: OSError: disk gone")
    # an unknown tool is an error either way; each agent is told the tools it has
    assert by_orch[2].startswith("error: unknown tool 'fly'") and by_sub[2].startswith(
        "error: unknown tool 'fly'"
    )
    assert "assign_task" in by_orch[2] and "assign_task" not in by_sub[2]


def test_one_swarm_schema_from_yaml_to_runtime() -> None:
    """phase.parl.swarm is the runtime's SwarmConfig: every field reaches it as set, none is mapped by hand."""
    from kimi_lab.config import compose, to_run_config

    cfg = to_run_config(compose(["phase=parl", "phase.parl.swarm.step_timeout_s=7"]))
    sw = cfg.phase.parl.swarm
    assert isinstance(sw, SwarmConfig)
    assert sw.step_timeout_s == 7.0 and sw.subagent_timeout_s != 7.0  # no longer one reusing the other
    assert sw.max_critical_steps is None  # each task's own budget
    task = make_task([1, 1])
    task.data["budgets"] = {"critical_steps": 9}
    assert sw.critical_budget(task) == 9 and text_cfg(max_critical_steps=5).critical_budget(task) == 5
    assert text_cfg().critical_budget(make_task([1])) == 64  # a task without a budget
    with pytest.raises(ConfigError, match=r"phase\.parl\.swarm\.nonsense"):
        compose(["phase=parl", "phase.parl.swarm.nonsense=1"])
    with pytest.raises(ConfigError, match=r"swarm\.max_subagent_steps=0"):
        to_run_config(compose(["phase=parl", "phase.parl.swarm.max_subagent_steps=0"]))


# ----------------------------------------------------------------------- concurrency
class Probe:
    """A sub-agent that sleeps and records how many of its kind run at once."""

    name = "probe"

    def __init__(self, sleep_s: float) -> None:
        self.sleep_s = sleep_s
        self.now = 0
        self.most = 0

    async def act(self, messages: list[Message], tools: list[ToolSpec], role: str) -> Turn:
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            await asyncio.sleep(self.sleep_s)
        finally:
            self.now -= 1
        return turn("result")


def test_subagents_of_a_stage_run_concurrently(tmp_path: Path) -> None:
    n, latency = 20, 0.05
    cfg = text_cfg(max_subagents=n, max_concurrency=n)
    t0 = time.perf_counter()
    res = run_episode_sync(
        make_task([1]),
        FakeEnv(),
        SimulatedPolicy(0.0, agents=n),
        SimulatedPolicy(latency, steps=3),
        cfg,
        tmp_path / "e.jsonl",
    )
    wall = time.perf_counter() - t0
    assert res.completed_assignments == n and res.critical_steps == 1 + (1 + 3) + 1
    assert wall < 0.4 * n * 3 * latency  # serial would take n * 3 * latency
    events = check_trace(tmp_path / "e.jsonl", res, cfg)
    # every sub-agent started before the first one finished
    first_finish = min(e["t"] for e in events if e["kind"] == "finish" and e["agent"] != ORCH)
    assert all(e["t"] < first_finish for e in events if e["kind"] == "assign")


def test_max_concurrency_bounds_running_subagents() -> None:
    probe = Probe(0.01)
    cfg = text_cfg(max_subagents=12, max_concurrency=3)
    res = run_episode_sync(make_task([1]), FakeEnv(), SimulatedPolicy(agents=12), probe, cfg)
    assert res.completed_assignments == 12 and probe.most == 3


# ----------------------------------------------------------------------- budgets
def test_critical_step_budget_ends_a_serial_episode() -> None:
    task = make_task([3, 3])
    cfg = text_cfg(single_agent=True, max_critical_steps=4)
    res = run_episode_sync(task, FakeEnv(), SingleAgentPolicy(task, combine), SimulatedPolicy(), cfg)
    assert res.budget_exceeded == "critical_steps" and res.critical_steps == 4 and res.tool_calls == 4
    assert res.answer is None and not res.finished


def test_orchestrator_step_budget() -> None:
    task = make_task([3, 3])
    cfg = text_cfg(single_agent=True, max_orchestrator_steps=3)
    res = run_episode_sync(task, FakeEnv(), SingleAgentPolicy(task, combine), SimulatedPolicy(), cfg)
    assert res.budget_exceeded == "orchestrator_steps" and res.orchestrator_steps == 3


def test_subagents_share_the_critical_budget_and_leave_the_orchestrator_a_step(tmp_path: Path) -> None:
    task = make_task([5, 5])
    cfg = text_cfg(max_critical_steps=5)
    res = run_episode_sync(
        task,
        FakeEnv(),
        FanOutPolicy(task, combine=combine),
        ScriptedSubagent(task),
        cfg,
        tmp_path / "e.jsonl",
    )
    # create (1), assign (1), sub-agents get 5 - 2 - 1 = 2 steps and fail, the answer (1)
    assert res.stage_steps == [2] and res.critical_steps == 5 and res.finished
    assert res.completed_assignments == 0 and res.errors == 2 and res.answer == ","
    check_trace(tmp_path / "e.jsonl", res, cfg)


def test_subagent_step_and_count_budgets() -> None:
    task = make_task([3, 3, 3, 3])
    cfg = text_cfg(max_subagent_steps=2, max_subagents=2)
    res = run_episode_sync(task, FakeEnv(), FanOutPolicy(task, combine=combine), ScriptedSubagent(task), cfg)
    tools = [m.content for m in res.messages if m.role == "tool"]
    assert res.subagents_spawned == 2 and res.stage_steps == [2]
    assert sum("sub-agents already" in t for t in tools) == 2
    assert sum("no sub-agent 'w" in t for t in tools) == 2
    assert sum("used its 2 steps" in t for t in tools) == 2
    check_budgets(res, cfg)


def test_episode_wall_clock_budget() -> None:
    cfg = text_cfg(single_agent=True, max_episode_s=0.1, max_orchestrator_steps=1000, max_critical_steps=1000)
    t0 = time.perf_counter()
    res = run_episode_sync(
        make_task([1]), FakeEnv(), SimulatedPolicy(0.03, steps=1000), SimulatedPolicy(), cfg
    )
    assert res.budget_exceeded == "time" and res.failure is None
    assert time.perf_counter() - t0 < 0.5


# ----------------------------------------------------------------------- faults
class Faulty:
    """A sub-agent with one fault."""

    name = "faulty"

    def __init__(self, kind: str) -> None:
        self.kind = kind

    async def act(self, messages: list[Message], tools: list[ToolSpec], role: str) -> Any:
        if self.kind == "raise":
            raise RuntimeError("boom")
        if self.kind == "hang":
            await asyncio.sleep(3600)
        if self.kind == "stubborn":  # ignores its first cancellation, unwinds slowly
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                await asyncio.sleep(0.3)
            return turn("late")
        if self.kind == "not-a-turn":
            return "some text"
        if self.kind == "bad-message":
            return Turn(message="text")  # type: ignore[arg-type]
        if self.kind == "user-role":
            return Turn(Message("user", "hi"))
        if self.kind == "bad-calls":
            return Turn(Message("assistant", "", [("search", "x")]))  # type: ignore[list-item]
        if self.kind == "truncated":
            return Turn(Message("assistant", "half a"), finished=False)
        if self.kind == "unknown-tool":
            if len(messages) > 2:
                return turn("recovered")
            return turn(calls=[("browse", "x")], errors=["malformed tool call: no <|tool_call_end|>"])
        raise AssertionError(self.kind)


FAULTS = {
    "raise": "failed: RuntimeError: boom",
    "hang": "timed out",
    "not-a-turn": "returned str, not a Turn",
    "bad-message": "holds no assistant message",
    "user-role": "holds no assistant message",
    "bad-calls": "malformed tool calls",
    "truncated": "cut off",
}


@pytest.mark.parametrize("kind", sorted(FAULTS))
def test_subagent_faults_become_error_observations(kind: str, tmp_path: Path) -> None:
    orch = Scripted([turn(calls=[create("w")]), turn(calls=[assign("w", "go"), ("search", "q")])])
    cfg = text_cfg(subagent_timeout_s=0.05)
    t0 = time.perf_counter()
    res = run_episode_sync(make_task([1]), FakeEnv(), orch, Faulty(kind), cfg, tmp_path / "e.jsonl")
    assert time.perf_counter() - t0 < 1.0
    result = res.messages[-3].content  # the assignment's tool message, then search's, then the answer
    assert result.startswith("w: error: sub-agent w") and FAULTS[kind] in result, result
    assert res.messages[-2].content == "search(q)"
    assert res.finished and res.errors == 1 and res.completed_assignments == 0 and res.failure is None
    events = check_trace(tmp_path / "e.jsonl", res, cfg)
    errors = [e for e in events if e["kind"] == "error"]
    assert [e["agent"] for e in errors] == ["w"] and FAULTS[kind] in errors[0]["detail"]["error"]
    fin = next(e for e in events if e["agent"] == "w" and e["kind"] == "finish")
    assert fin["detail"]["status"] == "error" and fin["detail"]["stage"] == 0


def test_step_timeout_of_a_subagent() -> None:
    orch = Scripted([turn(calls=[create("w")]), turn(calls=[assign("w", "go")])])
    cfg = text_cfg(step_timeout_s=0.02)
    res = run_episode_sync(make_task([1]), FakeEnv(), orch, Faulty("hang"), cfg)
    assert "step 1 timed out after 0.02s" in res.messages[-2].content


def test_a_subagent_that_resists_cancellation_is_left_behind(monkeypatch) -> None:
    monkeypatch.setattr(lanes, "_CANCEL_GRACE_S", 0.02)
    orch = Scripted([turn(calls=[create("w")]), turn(calls=[assign("w", "go")])])

    async def main() -> tuple[EpisodeResult, float]:
        t0 = time.perf_counter()
        res = await run_episode(
            make_task([1]), FakeEnv(), orch, Faulty("stubborn"), text_cfg(subagent_timeout_s=0.03)
        )
        return res, time.perf_counter() - t0

    res, wall = asyncio.run(main())
    assert wall < 0.25 and "timed out" in res.messages[-2].content and res.finished


def test_a_subagent_recovers_from_its_own_malformed_calls() -> None:
    orch = Scripted([turn(calls=[create("w")]), turn(calls=[assign("w", "go")])])
    seen: list[list[Message]] = []
    faulty = Faulty("unknown-tool")

    async def act(messages: list[Message], tools: list[ToolSpec], role: str) -> Any:
        seen.append(messages)
        return await Faulty.act(faulty, messages, tools, role)

    faulty.act = act  # type: ignore[method-assign]
    res = run_episode_sync(make_task([1]), FakeEnv(), orch, faulty)
    assert res.messages[-2].content == "w: recovered" and res.completed_assignments == 1 and res.errors == 2
    tools = [m.content for m in seen[1] if m.role == "tool"]
    assert tools[0] == "error: malformed tool call: no <|tool_call_end|>"
    assert tools[1].startswith("error: unknown tool 'browse' (tools: open, search)")


def test_malformed_orchestrator_calls_become_error_observations(tmp_path: Path) -> None:
    bad = turn(
        calls=[
            (CREATE_SUBAGENT, "{not json"),
            create("bad name!"),
            create(ORCH),
            create("w"),
            create("w"),
            (CREATE_SUBAGENT, json.dumps({"name": "v"})),
            (ASSIGN_TASK, json.dumps({"agent": "w"})),
            assign("nobody", "x"),
            assign("w", "first"),
            assign("w", "twice"),
            ("browse", "x"),
            ("open", "crash"),
        ],
        errors=["malformed tool call: 'a b' is not a tool name (first line of the call)"],
    )
    res = run_episode_sync(
        make_task([1]), FakeEnv(), Scripted([bad]), SimulatedPolicy(), trace=tmp_path / "e.jsonl"
    )
    tools = [m.content for m in res.messages if m.role == "tool"]
    expect = [
        "error: malformed tool call: 'a b'",
        "error: create_subagent takes a JSON object",
        "error: bad sub-agent name 'bad name!'",
        "error: bad sub-agent name 'orchestrator'",
        "created sub-agent w",
        "error: a sub-agent named 'w' exists already",
        "error: create_subagent takes a JSON object",
        "error: assign_task takes a JSON object",
        "error: no sub-agent 'nobody' (w)",
        "w: Answer: done in 1 steps",  # the sub-agent's result
        "error: 'w' is given work twice in one turn",
        "error: unknown tool 'browse'",
        "error: open failed: OSError: disk gone",
    ]
    assert len(tools) == len(expect)
    for got, want in zip(tools, expect):
        assert got.startswith(want), (got, want)
    assert res.errors == 10 and res.subagents_spawned == 1 and res.stage_widths == [1] and res.finished
    check_trace(tmp_path / "e.jsonl", res, text_cfg())


@pytest.mark.parametrize("kind", ["raise", "hang", "not-a-turn"])
def test_orchestrator_faults_end_the_episode_with_a_complete_trace(kind: str, tmp_path: Path) -> None:
    cfg = text_cfg(step_timeout_s=0.02)
    res = run_episode_sync(
        make_task([1]), FakeEnv(), Faulty(kind), SimulatedPolicy(), cfg, tmp_path / "e.jsonl"
    )
    assert res.failure is not None and not res.finished and res.answer is None
    assert res.orchestrator_steps == 1 and res.orchestrator_turns == []
    events = check_trace(tmp_path / "e.jsonl", res, cfg)
    assert events[-2]["kind"] == "error" and events[-1]["detail"]["failure"] == res.failure


def test_a_truncated_orchestrator_turn_ends_the_episode() -> None:
    res = run_episode_sync(make_task([1]), FakeEnv(), Faulty("truncated"), SimulatedPolicy())
    assert res.truncated and not res.finished and len(res.orchestrator_turns) == 1


def test_cancelling_an_episode_still_completes_its_trace(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"

    async def main() -> None:
        ep = asyncio.ensure_future(
            run_episode(make_task([1]), FakeEnv(), SimulatedPolicy(agents=3), Faulty("hang"), trace=path)
        )
        await asyncio.sleep(0.05)
        ep.cancel()
        with pytest.raises(asyncio.CancelledError):
            await ep

    asyncio.run(main())
    events = read_trace(path)
    assert (events[-1]["agent"], events[-1]["kind"]) == (ORCH, "finish")
    finishes = [e for e in events if e["kind"] == "finish" and e["agent"] != ORCH]
    assert len(finishes) == 3 and all(e["detail"]["status"] == "cancelled" for e in finishes)


# ----------------------------------------------------------------------- context, trace, reward
def test_subagent_context_is_bounded_by_cutting_old_tool_results() -> None:
    seen: list[list[Message]] = []

    class Reader:
        name = "reader"

        async def act(self, messages: list[Message], tools: list[ToolSpec], role: str) -> Turn:
            seen.append(messages)
            k = sum(m.role == "assistant" for m in messages)
            return turn(calls=[("open", f"p{k}")]) if k < 5 else turn("read them all")

    orch = Scripted([turn(calls=[create("w")]), turn(calls=[assign("w", "read")])])
    cfg = text_cfg(subagent_context_chars=2_500)
    res = run_episode_sync(make_task([1]), FakeEnv(result_chars=1000), orch, Reader(), cfg)
    assert res.completed_assignments == 1
    last = seen[-1]
    assert sum(len(m.content) + sum(len(c.input) for c in m.tool_calls) for m in last) <= 2_500
    tools = [m.content for m in last if m.role == "tool"]
    assert tools[-1].startswith("open(p4)") and tools[0].startswith("[cut:")
    # contexts handed out earlier kept their results
    assert next(m.content for m in seen[1] if m.role == "tool").startswith("open(p0)")


def test_long_subagent_results_are_cut_for_the_orchestrator() -> None:
    orch = Scripted([turn(calls=[create("w")]), turn(calls=[assign("w", "go")])])

    class Verbose:
        name = "verbose"

        async def act(self, messages: list[Message], tools: list[ToolSpec], role: str) -> Turn:
            return turn("y" * 500)

    res = run_episode_sync(make_task([1]), FakeEnv(), orch, Verbose(), text_cfg(result_chars=100))
    assert res.messages[-2].content.startswith("w: " + "y" * 100 + "\n[result cut at 100 chars]")


def test_trace_draws_in_the_dashboard_and_carries_the_reward(tmp_path: Path) -> None:
    task = make_task([1, 3, 2])
    path = tmp_path / "swarm" / "ep0.jsonl"

    def reward(task: SwarmTask, res: EpisodeResult) -> dict[str, float]:
        return {"perf": float(res.answer == "a0, a1, a2"), "parallel": res.parallelism / 10, "finish": 0.1}

    res = run_episode_sync(
        task,
        FakeEnv(),
        FanOutPolicy(task, combine=combine),
        ScriptedSubagent(task),
        trace=path,
        reward=reward,
    )
    assert res.reward == {"perf": 1.0, "parallel": 0.3, "finish": 0.1}
    events = check_trace(path, res, text_cfg())
    assert events[0] == {**events[0], "agent": ORCH, "kind": "message", "step": 0}
    assert events[-1]["detail"]["reward"] == res.reward and events[-1]["step"] == res.critical_steps
    kinds = {e["kind"] for e in events}
    assert kinds == set(M.SWARM_EVENT_KINDS) - {"error"}
    # sub-agent events count critical steps: the stage began after the orchestrator's 2 turns
    fin = {e["agent"]: e for e in events if e["kind"] == "finish" and e["agent"] != ORCH}
    assert {a: (e["step"], e["detail"]["steps"]) for a, e in fin.items()} == {
        "w1": (2 + 2, 2),
        "w2": (2 + 4, 4),
        "w3": (2 + 3, 3),
    }

    dash = _dashboard_functions()
    frame, bad, problem = dash["load_trace"](path)
    assert bad == 0 and problem is None
    bars = dash["spans"](frame)
    subs = bars[bars["agent"] != ORCH].set_index("agent")
    assert set(subs.index) == {"w1", "w2", "w3"}
    assert subs["critical"].to_dict() == {"w1": False, "w2": True, "w3": False}
    assert (subs["end"] >= subs["start"]).all()
    # on the critical-step axis each orchestrator turn is one step, each lane as long as its steps
    steps = dash["spans"](frame, "step")
    turns = steps[steps["agent"] == ORCH]
    assert list(zip(turns["start"], turns["end"])) == [(0, 1), (1, 2), (6, 7)] and res.critical_steps == 7
    lanes = steps[steps["agent"] != ORCH].set_index("agent")
    assert (lanes["start"] == 2).all() and lanes["end"].to_dict() == {"w1": 4, "w2": 6, "w3": 5}


def test_trace_writer_closes_an_unfinished_trace(tmp_path: Path) -> None:
    with TraceWriter(tmp_path / "t.jsonl") as w:
        w.emit(ORCH, "message", {"text": "hi"})
        with pytest.raises(ValueError, match="unknown swarm event kind"):
            w.emit(ORCH, "nonsense")
    events = read_trace(tmp_path / "t.jsonl")
    assert [e["kind"] for e in events] == ["message", "error", "finish"]
    w.emit(ORCH, "message")  # after close: ignored
    assert len(read_trace(tmp_path / "t.jsonl")) == 3


def test_config_is_checked() -> None:
    with pytest.raises(ConfigError, match="max_critical_steps"):
        text_cfg(max_critical_steps=0)
    with pytest.raises(ConfigError, match="subagent_timeout_s"):
        text_cfg(subagent_timeout_s=0)


# ----------------------------------------------------------------------- fault injection
class RandomFaults:
    """A sub-agent that at each step fails at random: raises, hangs, returns garbage, or works."""

    name = "random-faults"

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    async def act(self, messages: list[Message], tools: list[ToolSpec], role: str) -> Any:
        kind = self.rng.choice(["ok"] * 5 + ["raise", "hang", "garbage", "unknown"])
        if kind == "raise":
            raise RuntimeError("injected")
        if kind == "hang":
            await asyncio.sleep(3600)
        if kind == "garbage":
            return self.rng.choice(["junk", None, Turn(Message("user")), Turn(message=42)])  # type: ignore[arg-type]
        if kind == "unknown":
            return turn(calls=[("teleport", "x")])
        k = sum(m.role == "assistant" for m in messages)
        return turn(calls=[("search", "q")]) if k < self.rng.randint(0, 4) else turn("found it")


class FaultyOrchestrator:
    """Fan-out, with a small chance per turn of its own fault."""

    name = "faulty-orchestrator"

    def __init__(self, task: SwarmTask, rng: random.Random) -> None:
        self.inner = FanOutPolicy(task, width=rng.randint(1, 4), combine=combine)
        self.rng = rng

    async def act(self, messages: list[Message], tools: list[ToolSpec], role: str) -> Any:
        x = self.rng.random()
        if x < 0.01:
            raise RuntimeError("orchestrator bug")
        if x < 0.02:
            await asyncio.sleep(3600)
        if x < 0.03:
            return "garbage"
        return await self.inner.act(messages, tools, role)


# the error texts of the faults the soak test injects (each must show up in the traces)
INJECTED_FAULTS = (
    "failed: RuntimeError: injected",
    "timed out",
    "not a Turn",
    "no assistant message",
    "teleport",
)


def test_fault_injection_1000_episodes_never_hang_and_leave_complete_traces(tmp_path: Path) -> None:
    rng = random.Random(0)
    runs = []
    for i in range(1000):
        task = make_task([rng.randint(0, 3) for _ in range(rng.randint(1, 5))], tid=f"e{i}")
        cfg = text_cfg(
            max_orchestrator_steps=rng.randint(2, 6),
            max_subagent_steps=rng.randint(1, 5),
            max_critical_steps=rng.randint(3, 14),
            max_subagents=rng.randint(1, 5),
            max_concurrency=rng.randint(1, 4),
            subagent_timeout_s=0.03,
            step_timeout_s=0.01,
        )
        runs.append((task, cfg, tmp_path / f"e{i}.jsonl"))

    async def main() -> list[EpisodeResult]:
        eps = [
            run_episode(task, FakeEnv(), FaultyOrchestrator(task, rng), RandomFaults(rng), cfg, path)
            for task, cfg, path in runs
        ]
        return await asyncio.wait_for(asyncio.gather(*eps), timeout=60)

    t0 = time.perf_counter()
    results = asyncio.run(main())
    assert time.perf_counter() - t0 < 60
    dash = _dashboard_functions()
    faults: collections.Counter[str] = collections.Counter()
    for i, ((_, cfg, path), res) in enumerate(zip(runs, results)):
        check_budgets(res, cfg)
        events = check_trace(path, res, cfg)
        for e in events:
            for fault in INJECTED_FAULTS:
                faults[fault] += e["kind"] == "error" and e["agent"] != ORCH and fault in e["detail"]["error"]
        assert res.finished or res.budget_exceeded or res.failure, res
        if i % 50 == 0:  # the dashboard reads them (a sample: pandas is slow)
            frame, bad, problem = dash["load_trace"](path)
            assert bad == 0 and problem is None and not dash["spans"](frame).empty
    # the injected faults really happened, and so did successes
    assert sum(r.completed_assignments for r in results) > 300 and sum(r.finished for r in results) > 300
    assert sum(r.failure is not None for r in results) > 30
    assert {r.budget_exceeded for r in results} == {None, "orchestrator_steps", "critical_steps"}
    for fault in INJECTED_FAULTS:
        assert faults[fault] > 50, (fault, faults)
    assert sum(r.failure is not None for r in results) > 10 and sum(r.finished for r in results) > 300


# ----------------------------------------------------------------------- benchmark
def test_bench_swarm_reports_overhead_and_wall_ratio(capsys) -> None:
    from benchmarks.swarm import main

    res = main(["swarm", "--json", "--agents", "200", "--steps", "2", "--latency-ms", "5", "--trace"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out == json.loads(json.dumps(res))
    assert out["agents"] == 200 and out["steps_per_agent"] == 2
    assert out["critical_steps"] == 1 + (1 + 2) + 1 and out["subagent_steps"] == 400
    assert out["ideal_s"] == pytest.approx(out["critical_steps"] * 0.005)
    assert out["wall_over_ideal"] == pytest.approx(out["wall_s"] / out["ideal_s"])
    assert out["trace_events"] > 200 * 4
    for key in (
        "overhead_us_per_step",
        "zero_latency_us_per_step",
        "bare_asyncio_wall_over_ideal",
        "overhead_beyond_asyncio_us_per_step",
        "break_even_latency_ms",
    ):
        assert isinstance(out[key], float), key


def test_cli_runs_the_swarm_bench(capsys) -> None:
    from kimi_lab.cli import main

    def bench(*args: str) -> dict:
        main(["bench", "swarm", "--json", "--steps", "2", "--latency-ms", "1", *args])
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    one, five = bench("--agents", "1"), bench("--agents", "5", "--trace")
    # the sub-agents ran side by side: five take the critical steps one does (create, assign, the
    # assignment's two steps, answer), and every one of their steps ran
    assert one["critical_steps"] == five["critical_steps"] == 2 + 3
    assert five["subagent_steps"] == 10
    # the trace holds each sub-agent's spawn, assignment, tool call and result, and finish
    assert five["trace_events"] >= 5 * 5 and one["trace_events"] == 0
    main(["bench", "swarm", "--agents", "3", "--steps", "1", "--latency-ms", "1"])
    text = capsys.readouterr().out
    assert "3 concurrent simulated sub-agents" in text and "wall / ideal" in text
