"""The index action language: parsing, the runtime's items and ``solve``, rendered answers, budgets, tokens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kimi_lab.chat_format import Message, ToolCall
from kimi_lab.config.swarm import SwarmConfig
from kimi_lab.errors import ConfigError
from kimi_lab.swarm.actions import SELF, IndexActions, Job, Spawn, TextActions, Work
from kimi_lab.swarm.corpus import build_corpus
from kimi_lab.swarm.environment import SearchEnvironment
from kimi_lab.swarm.prompts import ASSIGN_TASK, CREATE_SUBAGENT, SOLVE
from kimi_lab.swarm.reward import perf_score
from kimi_lab.swarm.runtime import run_episode_sync
from kimi_lab.swarm.scripted import FanOutPolicy, ScriptedSubagent, SingleAgentPolicy
from kimi_lab.swarm.search_tasks import generate_tasks
from kimi_lab.swarm.types import SwarmTask, ToolSpec, Turn


@pytest.fixture(scope="module")
def world() -> tuple[list[SwarmTask], SearchEnvironment]:
    corpus = build_corpus(5)
    tasks = [generate_tasks(1, 5, ("wide",), (w, w), corpus, "val", slack=9)[0] for w in (2, 3, 4)]
    return tasks, SearchEnvironment(corpus)


class Script:
    """An orchestrator that plays fixed turns (tool calls as (name, JSON object)), then ``answer``."""

    name = "script"

    def __init__(self, turns: list[list[tuple[str, dict]]], answer: str) -> None:
        self.turns, self.answer = turns, answer

    async def act(self, messages: list[Message], tools: list[ToolSpec], role: str) -> Turn:
        k = sum(m.role == "assistant" for m in messages)
        if k < len(self.turns):
            return Turn(Message("assistant", "", [ToolCall(n, json.dumps(a)) for n, a in self.turns[k]]))
        return Turn(Message("assistant", self.answer))


# ----------------------------------------------------------------- parsing
def test_index_calls_parse_to_items_and_mistakes_to_error_texts(world) -> None:
    task = world[0][1]  # 3 items
    lang = IndexActions(task)
    prompts = [s["prompt"] for s in task.data["subtasks"]]
    assert lang.create('{"name":"w3"}') == Spawn("w3")
    assert lang.work(ASSIGN_TASK, '{"agent":"w3","items":[3,1]}') == Work(
        "w3", (Job(2, prompts[2]), Job(0, prompts[0]))
    )
    assert lang.work(SOLVE, '{"items":[2]}') == Work(SELF, (Job(1, prompts[1]),))
    whole = lang.work(ASSIGN_TASK, '{"agent":"w1","items":[]}')  # no item: the task, undecomposed
    assert isinstance(whole, Work) and whole.jobs[0].item is None and task.question in whole.jobs[0].prompt
    bad = {
        '{"agent":"w1","items":[4]}': "no item 4 (items are numbered 1 to 3)",
        '{"agent":"w1","items":[0]}': "no item 0",
        '{"agent":"w1","items":[1,1]}': "listed twice",
        '{"agent":"w1","items":["1"]}': "a list of item numbers",
        '{"agent":"w1","items":[true]}': "a list of item numbers",
        '{"agent":"w1","items":2}': "a list of item numbers",
        '{"items":[1]}': 'takes a JSON object {"agent":NAME,"items":[N,...]}',
        "w1 [1]": "takes a JSON object",
    }
    for text, why in bad.items():
        got = lang.work(ASSIGN_TASK, text)
        assert isinstance(got, str) and why in got, (text, got)
    assert isinstance(lang.create('{"agent":"w"}'), str)
    # the free-text language takes prompts and names, as before
    assert TextActions(task).work(ASSIGN_TASK, '{"agent":"a","prompt":"p"}') == Work("a", (Job(None, "p"),))
    with pytest.raises(ConfigError, match="actions='words'"):
        SwarmConfig(actions="words")


def test_index_answers_are_rendered_to_the_tasks_names_and_values(world) -> None:
    task = world[0][1]
    names = [s["entity"] for s in task.data["subtasks"]]
    lang = IndexActions(task)
    values = {"w1": {0: "1950"}, "w2": {1: "Osk"}, SELF: {2: "7"}}
    assert lang.render_answer("Answer:\n1=w1\n2=w2\n3=self", values) == (
        f"Answer: {names[0]}: 1950; {names[1]}: Osk; {names[2]}: 7"
    )
    # the one-line form reads the same; a reference to work that never returned that item renders nothing
    assert lang.render_answer("Answer: 1=w2; 2=w2; 9=w1", values) == f"Answer: {names[1]}: Osk"
    assert lang.render_answer("Answer: 3", values) == f"Answer: {names[2]}"  # which item (deep tasks)
    assert lang.render_answer("no answer line", values) == "no answer line"


# ----------------------------------------------------------------- the runtime
def test_a_fan_out_in_the_index_language_solves_its_task_in_the_swarms_steps(world) -> None:
    tasks, env = world
    for task in tasks:
        res = run_episode_sync(task, env, FanOutPolicy(task, interleave=True), ScriptedSubagent(task))
        # one turn creates and assigns (1 + the slowest item: 4 calls and a reply), then the answer
        assert res.critical_steps == 1 + 5 + 1 and res.budget == 17
        assert perf_score(task, res) == 1.0 and res.items_assigned == list(range(task.width))
        # last item first, down to item 1 (a model imitating it stops at a fixed point)
        w = task.width
        countdown = "Answer:\n" + "\n".join(f"{i}=w{i}" for i in range(w, 0, -1))
        assert res.final_text == countdown and res.answer_text.startswith("Answer: ")
        assert res.assignments == res.completed_assignments == w == res.subagents_spawned
        tools = [m.content for m in res.messages if m.role == "tool"]
        assert tools[:2] == ["created", f"{w}: {task.data['subtasks'][w - 1]['answer']}"]


def test_a_subagent_does_its_items_one_after_another(world) -> None:
    task = world[0][1]
    turns = [[(CREATE_SUBAGENT, {"name": "a"}), (CREATE_SUBAGENT, {"name": "b"})],
             [(ASSIGN_TASK, {"agent": "a", "items": [1, 3]}), (ASSIGN_TASK, {"agent": "b", "items": [2]})]]  # fmt: skip
    res = run_episode_sync(task, world[1], Script(turns, "Answer:\n1=a\n2=b\n3=a"), ScriptedSubagent(task))
    assert res.stage_steps == [10] and res.critical_steps == 1 + (1 + 10) + 1  # a: two items of 5 steps
    assert res.subagent_steps == 15 and perf_score(task, res) == 1.0
    subs = task.data["subtasks"]
    assert res.messages[6].content == f"1: {subs[0]['answer']}\n3: {subs[2]['answer']}"
    # the answer refers to agents: the wrong one renders no value, so the item is missed
    wrong = run_episode_sync(task, world[1], Script(turns, "Answer:\n1=b\n2=b\n3=a"), ScriptedSubagent(task))
    assert 0 < perf_score(task, wrong) < 1


def test_serial_work_costs_its_steps_and_fits_the_budget_only_at_narrow_widths(world) -> None:
    """``solve`` puts every look-up on the critical path: with slack 9 one agent finishes width 3,
    and at width 4 its work leaves no step to answer in, so the episode is over budget (score 0)."""
    tasks, env = world
    cfg = SwarmConfig(single_agent=True)
    for task in tasks:
        res = run_episode_sync(task, env, SingleAgentPolicy(task), ScriptedSubagent(task), cfg)
        solve = task.data["budgets"]["solve_steps"]
        # every item's 4 look-ups and reply, as far as the budget goes (its first step was the turn)
        assert res.own_steps == min(5 * task.width, res.budget - 1) and res.assignments == 0
        if solve <= res.budget:
            assert res.critical_steps == solve and res.budget_exceeded is None and perf_score(task, res) == 1
        else:
            assert res.budget_exceeded == "critical_steps" and perf_score(task, res) == 0.0
    assert [t.width for t in tasks if t.data["budgets"]["solve_steps"] <= 17] == [2, 3]
    # the same choice in a swarm's prompt: solve beside a sub-agent, one stage, the slower lane counts
    task = tasks[1]
    turns = [[(CREATE_SUBAGENT, {"name": "a"})], [(ASSIGN_TASK, {"agent": "a", "items": [1]}), (SOLVE, {"items": [2, 3]})]]  # fmt: skip
    res = run_episode_sync(task, env, Script(turns, "Answer:\n1=a\n2=self\n3=self"), ScriptedSubagent(task))
    assert res.stage_steps == [5] and res.critical_steps == 1 + (1 + 10) + 1 and perf_score(task, res) == 1.0
    assert res.stage_widths == [1] and res.assignments == 1 and res.own_steps == 10


def test_an_assignment_without_items_is_spurious_work(world) -> None:
    task = world[0][0]
    turns = [[(CREATE_SUBAGENT, {"name": "w1"}), (ASSIGN_TASK, {"agent": "w1", "items": [1]}),
              (CREATE_SUBAGENT, {"name": "w2"}), (ASSIGN_TASK, {"agent": "w2", "items": [2]}),
              (CREATE_SUBAGENT, {"name": "w3"}), (ASSIGN_TASK, {"agent": "w3", "items": []})]]  # fmt: skip
    cfg = SwarmConfig(max_subagent_steps=6)
    res = run_episode_sync(task, world[1], Script(turns, "Answer:\n1=w1\n2=w2"), ScriptedSubagent(task), cfg)
    # the idle sub-agent searches until its steps run out: no result, and the stage waits for it
    assert res.completed_assignments == 2 and res.assignments == 3 and res.stage_steps == [6]
    assert (
        perf_score(task, res) == 1.0
        and "task: error: sub-agent w3: used its 6 steps" in res.messages[8].content
    )


# ----------------------------------------------------------------- tokens
def test_what_a_demonstration_copies_is_tokenized_alike_wherever_it_appears(
    world, tiny_tokenizer: Path
) -> None:
    """Item numbers (question, calls, answer) and agent names (creation, assignment, answer) in the
    index language; in free text a value in a sub-agent's result and in the answer."""
    from kimi_lab.data.tokenizer import Tokenizer

    tok = Tokenizer(tiny_tokenizer)
    task, env = world[0][2], world[1]  # 4 items

    def pieces(text: str) -> list[str]:
        return [tok.decode([i]) for i in tok.encode(text)]

    res = run_episode_sync(task, env, FanOutPolicy(task, interleave=True), ScriptedSubagent(task))
    question = pieces(res.messages[1].content)
    calls = [pieces(c.input) for c in res.messages[2].tool_calls]
    answer = pieces(res.messages[-1].content)
    for i in range(1, task.width + 1):
        j = task.width - i  # the calls walk the items last first
        n, w = str(i), f"w{i}"
        assert n in question and n in answer and n in calls[2 * j + 1]  # "\n3." / "[3]" / "\n3="
        assert pieces(w)[-1] in calls[2 * j] and pieces(w)[-1] in calls[2 * j + 1]
    text = run_episode_sync(
        task, env, FanOutPolicy(task), ScriptedSubagent(task), SwarmConfig(actions="text")
    )
    value = task.data["subtasks"][0]["answer"]
    result = next(m.content for m in text.messages if m.role == "tool" and m.content.startswith("w1: "))
    ids = tok.encode(f" {value}")  # after "NAME:" in the answer, and after "w1:" in the result
    encoded_result, encoded_answer = tok.encode(result), tok.encode(text.answer_text)

    def contains(seq: list[int], sub: list[int]) -> bool:
        return any(seq[i : i + len(sub)] == sub for i in range(len(seq)))

    assert contains(encoded_result, ids) and contains(encoded_answer, ids)
