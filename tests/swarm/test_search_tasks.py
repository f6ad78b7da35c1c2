"""Swarm tasks: the fictional corpus, the search environment, verified decompositions, budgets, scoring."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from data_pipelines.swarm_tasks import build_swarm_tasks
from kimi_lab.data.shards import iter_shard_samples
from kimi_lab.errors import DataError
from kimi_lab.swarm.corpus import Corpus, build_corpus
from kimi_lab.swarm.environment import MAX_INPUT_CHARS, SearchEnvironment, is_error
from kimi_lab.swarm.search_tasks import (
    CORPUS_FILE,
    SLACK_STEPS,
    answer_items,
    combine_answers,
    generate_tasks,
    item_f1,
    load_swarm_tasks,
    normalize,
    score_swarm,
    step_budgets,
    task_from_dict,
    task_to_dict,
    verify_task,
)
from tests.conftest import run_cli

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return build_corpus(0)


@pytest.fixture(scope="module")
def env(corpus: Corpus) -> SearchEnvironment:
    return SearchEnvironment(corpus)


@pytest.fixture(scope="module")
def tasks(corpus: Corpus) -> list:
    return generate_tasks(60, 0, width_range=(2, 6), corpus=corpus) + generate_tasks(
        20, 0, width_range=(2, 6), corpus=corpus, split="val"
    )


# ------------------------------------------------------------------ corpus
def test_corpus_is_deterministic_and_fictional(corpus: Corpus, tmp_path: Path) -> None:
    again = build_corpus(0)
    assert [(d.id, d.title, d.text) for d in again.docs] == [(d.id, d.title, d.text) for d in corpus.docs]
    other = build_corpus(1)
    assert {d.title for d in other.docs} != {d.title for d in corpus.docs}
    assert len({d.title for d in corpus.docs}) == len(corpus)  # a name identifies one entity
    assert {d.kind for d in corpus.docs} == {"company", "person", "city", "river"}
    assert {d.world for d in corpus.docs} == {"train", "val"}
    # links stay inside a world, so val entities are unreachable from train ones
    for d in corpus.docs:
        for attr in ("founder", "ceo", "headquarters", "birthplace", "river", "mayor"):
            if attr in d.attrs:
                assert corpus.by_id[d.attrs[attr]].world == d.world
    corpus.save(tmp_path / "c.jsonl")
    loaded = Corpus.load(tmp_path / "c.jsonl")
    assert loaded.docs == corpus.docs and loaded.seed == 0


def test_company_document_names_its_facts(corpus: Corpus) -> None:
    company = corpus.entities("company", "train")[0]
    for attr in ("founder", "ceo", "headquarters", "founded", "employees"):
        assert corpus.value(company, attr) in company.text


# ------------------------------------------------------------------ environment
def test_search_then_open(corpus: Corpus, env: SearchEnvironment) -> None:
    assert [t.name for t in env.tools] == ["search", "open"]
    company = corpus.entities("company", "val")[3]
    hits = env.call("search", company.title).splitlines()
    assert hits[0] == f"{company.id} | {company.title}" and len(hits) <= env.top_k
    assert env.call("search", company.title.lower() + "  ") == env.call("search", company.title)
    page = env.call("open", company.id)
    assert page.startswith(f"{company.id} | {company.title}\n") and company.text in page
    assert env.call("open", f" '{company.id}' ") == page  # quotes and spaces a model may add
    assert SearchEnvironment(corpus, max_doc_chars=20).call("open", company.id).endswith("[truncated]")


@pytest.mark.parametrize(
    ("tool", "tool_input"),
    [
        ("browse", "x"),
        ("search", ""),
        ("search", "  ?!  "),
        ("search", "q" * (MAX_INPUT_CHARS + 1)),
        ("open", ""),
        ("open", "doc-99999"),
        ("open", "Varkon Industries"),
        ("open", None),
    ],
)
def test_bad_calls_are_error_texts(env: SearchEnvironment, tool: str, tool_input: object) -> None:
    out = env.call(tool, tool_input)  # type: ignore[arg-type]
    assert isinstance(out, str) and is_error(out)


def test_no_match_is_not_an_error(env: SearchEnvironment) -> None:
    out = env.call("search", "zzqqxx")
    assert "no documents match" in out and not is_error(out)


def test_concurrent_reads_agree(corpus: Corpus, env: SearchEnvironment) -> None:
    queries = [d.title for d in corpus.docs[:64]]
    serial = [env.call("search", q) for q in queries]
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(lambda q: env.call("search", q), queries)) == serial


# ------------------------------------------------------------------ generation
def test_generation_is_deterministic(corpus: Corpus) -> None:
    a = generate_tasks(12, 3, corpus=corpus)
    assert [task_to_dict(t) for t in a] == [task_to_dict(t) for t in generate_tasks(12, 3, corpus=corpus)]
    assert [t.kind for t in a] == ["wide", "deep"] * 6
    assert {t.kind for t in generate_tasks(4, 3, kinds=("deep",), corpus=corpus)} == {"deep"}
    assert len({t.question for t in generate_tasks(80, 3, corpus=corpus)}) == 80


def test_every_subtask_replays_to_its_answer(tasks: list, env: SearchEnvironment) -> None:
    for task in tasks:
        assert verify_task(task, env) is None
        subs = task.data["subtasks"]
        assert task.width == len(subs) >= 2
        for sub in subs:
            assert len(sub["calls"]) >= 4  # two hops: search, open, search, open
            out = ""
            for tool, tool_input in sub["calls"]:
                out = env.call(tool, tool_input)
                assert not is_error(out)
            assert sub["answer"] in out
        final = combine_answers(task, [s["answer"] for s in subs])
        assert score_swarm(task, final) == 1.0


def test_wide_and_deep_shapes(tasks: list, corpus: Corpus) -> None:
    for task in tasks:
        keys = task.data["combine"]["keys"]
        assert keys == [s["entity"] for s in task.data["subtasks"]]
        if task.kind == "wide":
            assert task.data["combine"]["op"] == "list" and len(task.answer) == task.width
        else:
            assert task.data["combine"]["op"] in ("argmax", "argmin")
            assert task.answer[0] in keys and len(task.answer) == 1
            values = [float(s["answer"].replace(",", "")) for s in task.data["subtasks"]]
            assert len(set(values)) == len(values)  # one right answer


def test_questions_number_their_items_and_subtasks_use_the_questions_words(tasks: list) -> None:
    for task in tasks:
        keys = task.data["combine"]["keys"]
        lines = task.question.splitlines()
        assert [f"{i}. {k}" for i, k in enumerate(keys, 1)] == lines[1 : 1 + len(keys)]
        if task.kind == "wide":  # a sub-task copies the item's name and the question's phrase
            for sub in task.data["subtasks"]:
                phrase = sub["prompt"].split(", find ", 1)[1].split(".")[0]
                assert sub["prompt"].startswith(f"For {sub['entity']}, find ") and phrase in task.question


def test_scripted_subagent_is_an_oracle_only_for_a_prompt_naming_one_entity(
    tasks: list, env: SearchEnvironment
) -> None:
    from kimi_lab.config.swarm import SwarmConfig
    from kimi_lab.swarm.prompts import ASSIGN_TASK, CREATE_SUBAGENT
    from kimi_lab.swarm.runtime import run_episode_sync
    from kimi_lab.swarm.scripted import ScriptedSubagent
    from kimi_lab.swarm.types import Turn

    task = next(t for t in tasks if t.kind == "wide" and t.width >= 3)
    subs = task.data["subtasks"]
    oracle = ScriptedSubagent(task)
    assert oracle.match(f"Tell me about {subs[1]['entity']} please") is subs[1]  # any words naming it
    assert oracle.match(f"{subs[0]['entity']} and {subs[1]['entity']}") is None  # two items: not one sub-task
    assert oracle.match("Look for anything useful.") is None
    prompts = [f"About {subs[0]['entity']}: do it.", "Look for anything useful.", task.question]

    class Orchestrator:
        name = "fixed"

        async def act(self, messages, tools, role):
            from kimi_lab.chat_format import Message, ToolCall

            k = sum(m.role == "assistant" for m in messages)
            make = [
                ToolCall(CREATE_SUBAGENT, json.dumps({"name": f"w{i}", "system_prompt": ""}))
                for i in range(3)
            ]
            go = [
                ToolCall(ASSIGN_TASK, json.dumps({"agent": f"w{i}", "prompt": p}))
                for i, p in enumerate(prompts)
            ]
            return (
                Turn(Message("assistant", "", [make, go][k]))
                if k < 2
                else Turn(Message("assistant", "Answer: x"))
            )

    cfg = SwarmConfig(actions="text", max_critical_steps=30, max_subagent_steps=6)
    res = run_episode_sync(task, env, Orchestrator(), oracle, cfg)
    results = [m.content for m in res.messages if m.role == "tool"][-3:]
    assert results[0] == f"w0: {subs[0]['answer']}"
    # a lost sub-agent searches until its steps run out, and that is an error, not a result
    assert all(r.startswith(f"w{i}: error:") and "steps" in r for i, r in enumerate(results[1:], 1))
    assert res.assignments == 3 and res.completed_assignments == 1 and max(res.stage_steps) == 6


def test_train_and_val_tasks_share_no_entity(tasks: list, corpus: Corpus) -> None:
    titles = {d.title: d for d in corpus.docs}
    for task in tasks:
        for sub in task.data["subtasks"]:
            names = [inp for tool, inp in sub["calls"] if tool == "search"]
            assert {titles[n].world for n in names} == {task.data["split"]}


def test_bad_generation_arguments(corpus: Corpus) -> None:
    with pytest.raises(ValueError, match="kinds"):
        generate_tasks(2, kinds=("broad",), corpus=corpus)
    with pytest.raises(ValueError, match="width"):
        generate_tasks(2, width_range=(1, 3), corpus=corpus)
    with pytest.raises(ValueError, match="split"):
        generate_tasks(2, corpus=corpus, split="test")


# ------------------------------------------------------------------ budgets
def test_a_swarm_always_fits_its_budget(tasks: list) -> None:
    for task in tasks:
        b = task.data["budgets"]
        calls = [len(s["calls"]) for s in task.data["subtasks"]]
        # stage 1: create (1 + 0); stage 2: assign (1 + slowest sub-agent's calls + its reply); answer
        swarm = 1 + (1 + max(calls) + 1) + 1
        assert b["serial_steps"] == sum(calls) + 1  # one call per step, then the answer
        assert b["solve_steps"] == 1 + sum(c + 1 for c in calls) + 1  # one solve turn, each item, answer
        assert b["parallel_steps"] == swarm and b["critical_steps"] == swarm + SLACK_STEPS
        # a swarm whose sub-agents use every step they are allowed still fits
        assert 1 + (1 + b["subagent_steps"]) + 1 <= b["critical_steps"]


def test_step_budget_formulas() -> None:
    assert step_budgets([4, 4]) == {
        "critical_steps": 10,
        "serial_steps": 9,
        "solve_steps": 12,
        "parallel_steps": 8,
        "subagent_steps": 7,
        "width": 2,
    }
    # the slack sets the widths one agent can finish alone: a swarm finishes every width
    fits = {}
    for w in range(2, 9):
        b = step_budgets([4] * w, slack=9)
        fits[w] = (b["solve_steps"] <= b["critical_steps"], b["serial_steps"] <= b["critical_steps"])
        assert b["parallel_steps"] <= b["critical_steps"] == 17
    assert [w for w, (index, _) in fits.items() if index] == [2, 3]  # (s + 6) / 5
    assert [w for w, (_, text) in fits.items() if text] == [2, 3, 4]  # (s + 7) / 4
    with pytest.raises(ValueError):
        step_budgets([4])  # one item: nothing to split
    with pytest.raises(ValueError):
        step_budgets([4, 4], slack=-1)


# ------------------------------------------------------------------ scoring
def test_item_f1_examples() -> None:
    gold = ["Varkon Industries: 1954", "Telmira Works: 412,300", "Osk Group: Melrath"]
    assert item_f1(gold, gold) == 1.0
    assert item_f1(["telmira works 412300", "OSK GROUP — Melrath!", "varkon  industries:1954"], gold) == 1.0
    assert item_f1(gold[:1], gold) == pytest.approx(2 * 1 * (1 / 3) / (1 + 1 / 3))  # p=1, r=1/3
    assert item_f1([*gold[:2], "Osk Group: 1960"], gold) == pytest.approx(2 / 3)
    assert item_f1([], gold) == 0.0 and item_f1(["", "  "], gold) == 0.0
    assert item_f1([], []) == 1.0
    # a duplicate counts once: p = 2/3, r = 1/2
    assert item_f1(["a: 1", "a: 1", "b: 2"], ["a: 1", "b: 2", "c: 3", "d: 4"]) == pytest.approx(
        2 * (2 / 3) * (1 / 2) / (2 / 3 + 1 / 2)
    )
    assert item_f1(["a: 1", "a: 1"], ["a: 1", "a: 1"]) == 1.0
    assert normalize("The  Oshlen River.") == normalize("oshlen river") == "oshlen river"


def test_answer_items_parsing() -> None:
    assert answer_items("thinking...\nAnswer: a: 1; b: 2 ;  ; c: 3") == ["a: 1", "b: 2", "c: 3"]
    assert answer_items("Answer: x\nAnswer: a; b") == ["a", "b"]  # the last answer line
    assert answer_items("Answer: a; b\nI hope this helps; bye") == ["a", "b"]  # prose is no item
    assert answer_items("Answer:\n- a: 1\n- b: 2\n\nThanks") == ["a: 1", "b: 2"]
    assert answer_items("Answer: 1. a: 1\n2. b: 2") == ["a: 1", "b: 2"]
    assert answer_items("no answer line") == [] and answer_items(None) == []


def test_score_swarm(tasks: list) -> None:
    wide = next(t for t in tasks if t.kind == "wide")
    deep = next(t for t in tasks if t.kind == "deep")
    assert score_swarm(wide, "Answer: " + "; ".join(reversed(wide.answer))) == 1.0  # order-free
    assert 0.0 < score_swarm(wide, "Answer: " + wide.answer[0]) < 1.0
    assert score_swarm(wide, "I don't know") == 0.0
    assert score_swarm(deep, f"It must be\nAnswer: {deep.answer[0].upper()}.") == 1.0
    loser = next(k for k in deep.data["combine"]["keys"] if k != deep.answer[0])
    assert score_swarm(deep, f"Answer: {loser}") == 0.0
    assert score_swarm(deep, None) == 0.0 and score_swarm({"kind": "nope"}, "Answer: x") == 0.0
    assert score_swarm(task_to_dict(deep), f"Answer: {deep.answer[0]}") == 1.0


def test_combine_reads_sub_agent_replies(tasks: list) -> None:
    deep = next(t for t in tasks if t.kind == "deep")
    replies = [f"I looked it up.\nAnswer: {s['answer']}." for s in deep.data["subtasks"]]
    assert score_swarm(deep, combine_answers(deep, replies)) == 1.0
    assert combine_answers(deep, ["error: timed out"] * deep.width) == "Answer: unknown"
    wide = next(t for t in tasks if t.kind == "wide")
    partial = [s["answer"] for s in wide.data["subtasks"]]
    partial[0] = ""
    assert score_swarm(wide, combine_answers(wide, partial)) < 1.0


def test_task_round_trip(tasks: list) -> None:
    for task in tasks[:6]:
        d = json.loads(json.dumps(task_to_dict(task)))
        assert task_from_dict(d) == task
    with pytest.raises(ValueError):
        task_from_dict({"kind": "broad"})


# ------------------------------------------------------------------ builder and CLI
def test_builder_writes_disjoint_splits(tmp_path: Path) -> None:
    out = tmp_path / "swarm"
    manifest = build_swarm_tasks(out, n=30, seed=2, val_fraction=0.2)
    c = manifest["counts"]
    assert (c["train"], c["val"], c["verified"], c["wide"], c["deep"]) == (24, 6, 30, 15, 15)
    assert manifest["kind"] == "swarm-tasks" and manifest["corpus"]["file"] == CORPUS_FILE
    assert manifest["shards"]["train"] and manifest["shards"]["val"]
    samples = list(iter_shard_samples(iter(str(p) for p in sorted(out.glob("*.tar"))), lambda exn: False))
    assert len(samples) == 30
    record = json.loads(samples[0]["json"])
    assert record["modality"] == "chat" and [m["role"] for m in record["messages"]] == ["system", "user"]

    train, corpus = load_swarm_tasks(out, "train")
    val, _ = load_swarm_tasks(out, "val")
    assert len(train) == 24 and len(val) == 6 and corpus.seed == 2
    assert not {t.question for t in train} & {t.question for t in val}
    entities = {
        split: {s["entity"] for t in ts for s in t.data["subtasks"]}
        | {inp for t in ts for s in t.data["subtasks"] for tool, inp in s["calls"]}
        for split, ts in (("train", train), ("val", val))
    }
    assert not entities["train"] & entities["val"]
    env = SearchEnvironment(corpus)
    assert all(verify_task(t, env) is None for t in train + val)

    # a rebuild replaces the shards; no val fraction leaves no val shard
    manifest = build_swarm_tasks(out, n=4, seed=2, val_fraction=0.0, kinds=("wide",))
    assert manifest["counts"]["val"] == 0 and not list(out.glob("val-*.tar"))
    with pytest.raises(DataError):
        load_swarm_tasks(out, "val")
    with pytest.raises(DataError, match="kinds"):
        build_swarm_tasks(out, n=4, kinds=("broad",))
    with pytest.raises(DataError, match="val-fraction"):
        build_swarm_tasks(out, n=4, val_fraction=1.0)


def test_cli_builds_swarm_tasks(tmp_path: Path) -> None:
    out = tmp_path / "swarm"
    args = ["--out", str(out), "--n", "10", "--seed", "1", "--val-fraction", "0.3", "--kinds", "deep"]
    built = run_cli("data", "build", "swarm-tasks", *args, cwd=REPO)
    assert built.returncode == 0, built.stderr
    assert "swarm-tasks shards" in built.stdout and "verified 10" in built.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert (
        manifest["counts"]["train"] == 7 and manifest["counts"]["val"] == 3 and manifest["kinds"] == ["deep"]
    )
    assert (out / CORPUS_FILE).is_file()

    bad = run_cli("data", "build", "swarm-tasks", "--out", str(out), "--kinds", "wide,broad", cwd=REPO)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "broad" in bad.stderr
