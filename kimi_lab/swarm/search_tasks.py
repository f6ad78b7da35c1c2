"""Wide and deep search tasks over the swarm corpus: generation, step budgets, combining, scoring.

*Wide* (WideSearch-like): "for each of these N companies, find the birth year of
its chief executive". Each item is an independent two-hop look-up (search the
company, open it, search the person it names, open that) -- 4 tool calls. The
answer is one ``NAME: VALUE`` item per entity, scored by item-F1.

*Deep* (BrowseComp-like): "which of these K companies has the oldest founder?".
Each branch is the same two-hop look-up; the final answer combines the branches
(argmax / argmin) and is scored 1/0 by normalised exact match.

Every task carries what a scripted baseline needs: ``data["subtasks"]`` (prompt,
the exact tool calls that solve it, and its answer -- all replayed against the
environment when the task is generated), ``data["combine"]`` (``{"op": "list" |
"argmax" | "argmin", "keys": [entity per subtask]}``, applied by
``combine_answers``), ``data["budgets"]`` and ``data["answer_format"]`` (the
question's last line in each action language, ``kimi_lab.swarm.actions``).

Step budgets (``step_budgets``), in critical steps (PAPER_NOTES section 7: a
stage costs one orchestrator step plus its longest lane), counting one environment
tool call per step and one step to write the answer, with c_i the calls of
sub-task i, W the width and ``slack`` the builder's:

    serial_steps   = sum_i c_i + 1          one agent doing every call itself (free text)
    solve_steps    = 1 + sum_i (c_i + 1) + 1
                     one agent in the index language: one ``solve`` turn, each item's
                     calls and reply, then the answer
    subagent_need  = max_i c_i + 1          a sub-agent's calls, then its reply
    parallel_steps = 1 + (1 + subagent_need) + 1
                     (create the sub-agents; assign all at once, wait for the
                     slowest; write the answer)
    critical_steps = parallel_steps + slack
    subagent_steps = subagent_need + slack

so a swarm of W sub-agents always fits (with ``slack`` to spare for a retry, or for
sub-agents given two items each), and one agent fits only while W is small: with 4
calls per item and slack s, serial work fits for W <= (s + 7) / 4 (free text) or
W <= (s + 6) / 5 (index). That is the curriculum PARL needs: widths where working
alone scores and widths where only delegating does. It assumes one environment call
per step: an agent that batches the W independent searches (then the W opens) of a
wide task into single turns would need only 5 turns, so a runtime that charges per
turn must also allow one environment call per turn for the bound to bind.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

from kimi_lab.chat_format import Message, extract_answer
from kimi_lab.swarm.actions import question, reply_value
from kimi_lab.swarm.corpus import RELATIONS, Corpus, Doc, Relation, build_corpus
from kimi_lab.swarm.environment import TOOLS, SearchEnvironment, is_error
from kimi_lab.swarm.types import SwarmTask

TASK_KINDS = ("wide", "deep")
SPLITS = ("train", "val")  # task splits use the corpus world of the same name
CORPUS_FILE = "corpus.jsonl"
ORCHESTRATOR_SETUP_STEPS = 2  # create the sub-agents, then assign them their tasks
SLACK_STEPS = 2
MAX_CHARS = 20_000  # the answer comes last; bounds parsing work on huge outputs
MAX_ITEMS = 256
_ANSWER_START = re.compile(r"(?im)^[ \t]*answer[ \t]*:")
_BULLET = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)]\s)\s*")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_PLURAL = {"company": "companies", "city": "cities", "person": "people"}

SYSTEM_PROMPT = (
    "You answer questions about a local corpus of documents. You have two tools: "
    + "; ".join(f"`{t.name}` ({t.description}; input: {t.input_format})" for t in TOOLS)
    + ". Nothing in the corpus is common knowledge: look every fact up. "
    "End with a final line `Answer: ...`."
)


# ------------------------------------------------------------------ budgets
def step_budgets(calls: list[int], slack: int = SLACK_STEPS) -> dict[str, int]:
    """Critical-step budgets for sub-tasks of ``calls[i]`` tool calls (formulas in the module docstring)."""
    if len(calls) < 2 or slack < 0:
        raise ValueError(f"budgets need two or more sub-tasks and slack >= 0 (got {calls}, slack {slack})")
    subagent_need = max(calls) + 1
    parallel = ORCHESTRATOR_SETUP_STEPS + subagent_need + 1
    return {
        "critical_steps": parallel + slack,
        "serial_steps": sum(calls) + 1,
        "solve_steps": 1 + sum(c + 1 for c in calls) + 1,
        "parallel_steps": parallel,
        "subagent_steps": subagent_need + slack,
        "width": len(calls),
    }


# ------------------------------------------------------------------ generation
def subtask_prompt(rel: Relation, name: str) -> str:
    """One item's sub-task in the words of the wide question ("For X, find ..."): what a
    decomposition writes by copying the item's name and the question's phrase."""
    return f"For {name}, find {rel.each}."


def _subtask(corpus: Corpus, rel: Relation, root: Doc) -> dict[str, Any]:
    hop = corpus.by_id[root.attrs[rel.link]]
    return {
        "prompt": subtask_prompt(rel, root.title),
        "calls": [["search", root.title], ["open", root.id], ["search", hop.title], ["open", hop.id]],
        "answer": corpus.value(hop, rel.attr),
        "entity": root.title,
    }


def _numbered(names: list[str]) -> str:
    """The items of a question, one numbered line each, so a decomposition can keep its place."""
    return "\n".join(f"{i}. {name}" for i, name in enumerate(names, 1))


def _wide(rng: random.Random, corpus: Corpus, world: str, width: int) -> tuple[Any, ...] | None:
    rel = rng.choice(RELATIONS)
    roots = corpus.entities(rel.root, world)
    if len(roots) < width:
        return None
    chosen = rng.sample(roots, width)
    subs = [_subtask(corpus, rel, e) for e in chosen]
    keys = [e.title for e in chosen]
    question = f"For each of these {width} {_PLURAL[rel.root]}, find {rel.each}:\n{_numbered(keys)}"
    answer = [f"{k}: {s['answer']}" for k, s in zip(keys, subs)]
    return rel, question, answer, subs, {"op": "list", "keys": keys}


def _deep(rng: random.Random, corpus: Corpus, world: str, width: int) -> tuple[Any, ...] | None:
    rel = rng.choice([r for r in RELATIONS if r.most])
    op = rng.choice(("argmax", "argmin"))
    roots = corpus.entities(rel.root, world)
    rng.shuffle(roots)
    chosen, seen = [], set()
    for e in roots:  # distinct values: the superlative has exactly one right answer
        v = corpus.by_id[e.attrs[rel.link]].attrs[rel.attr]
        if v not in seen:
            chosen.append((v, e))
            seen.add(v)
        if len(chosen) == width:
            break
    if len(chosen) < width:
        return None
    pick = max if op == "argmax" else min
    winner = pick(chosen, key=lambda ve: ve[0])[1]
    keys = [e.title for _, e in chosen]
    question = f"Which of these {width} {_PLURAL[rel.root]} {rel.most[op == 'argmin']}?\n{_numbered(keys)}"
    subs = [_subtask(corpus, rel, e) for _, e in chosen]
    return rel, question, [winner.title], subs, {"op": op, "keys": keys}


ANSWER_FORMATS = {  # the question's last line, per kind and action language
    "wide": {
        "text": "End with one final line `Answer: NAME: VALUE; NAME: VALUE; ...`, one item per name.",
        "index": "End with `Answer:` and one line ITEM=AGENT per item.",
    },
    "deep": {
        "text": "End with one final line `Answer: NAME`.",
        "index": "End with one final line `Answer: ITEM` (the item's number).",
    },
}


def generate_tasks(
    n: int,
    seed: int = 0,
    kinds: tuple[str, ...] | list[str] = TASK_KINDS,
    width_range: tuple[int, int] = (3, 6),
    corpus: Corpus | None = None,
    split: str = "train",
    slack: int = SLACK_STEPS,
) -> list[SwarmTask]:
    """``n`` distinct tasks over the ``split`` world of ``corpus`` (default: ``build_corpus(seed)``),
    kinds in turn; the same arguments give the same tasks. Every sub-task is replayed and checked.
    ``slack``: critical steps a swarm has beyond its fastest path (``step_budgets``)."""
    kinds = tuple(kinds)
    bad = [k for k in kinds if k not in TASK_KINDS]
    if not kinds or bad:
        raise ValueError(f"task kinds {list(kinds)}: choose from {', '.join(TASK_KINDS)}")
    lo, hi = width_range
    if not 2 <= lo <= hi:
        raise ValueError(f"width range {width_range}: needs 2 <= min <= max (one item needs no swarm)")
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
    corpus = corpus or build_corpus(seed)
    env = SearchEnvironment(corpus)
    tasks, seen = [], set()
    for i in range(n):
        kind = kinds[i % len(kinds)]
        for attempt in range(200):
            rng = random.Random(f"swarm-tasks/{seed}/{split}/{i}/{attempt}")
            made = (_wide if kind == "wide" else _deep)(rng, corpus, split, rng.randint(lo, hi))
            if made is not None and made[1] not in seen:
                break
        else:
            raise ValueError(f"the corpus's {split} world is too small for {n} distinct {kind} tasks")
        rel, question, answer, subs, combine = made
        seen.add(question)
        task = SwarmTask(
            id=f"swarm-{seed}-{split}-{i:05d}",
            kind=kind,
            question=question,
            answer=answer,
            width=len(subs),
            data={
                "relation": rel.name,
                "split": split,
                "corpus": {"seed": corpus.seed, "docs": len(corpus)},
                "subtasks": subs,
                "combine": combine,
                "budgets": step_budgets([len(s["calls"]) for s in subs], slack),
                "answer_format": ANSWER_FORMATS[kind],
            },
        )
        problem = verify_task(task, env)
        if problem:  # a generator bug: never ship a task its own solution cannot solve
            raise RuntimeError(f"{task.id}: {problem}")
        tasks.append(task)
    return tasks


def verify_subtask(env: SearchEnvironment, sub: dict[str, Any]) -> str | None:
    """Replay a sub-task's calls: each input must be readable from what came before, none may
    fail, and the last observation must contain the answer. None when it holds, else why not."""
    seen = sub["prompt"]
    for tool, tool_input in sub["calls"]:
        if tool_input not in seen:
            return f"{tool} {tool_input!r}: the agent could not have read that input"
        seen = env.call(tool, tool_input)
        if is_error(seen):
            return f"{tool} {tool_input!r}: {seen}"
    return None if sub["answer"] in seen else f"answer {sub['answer']!r} not in the last observation"


def verify_task(task: SwarmTask, env: SearchEnvironment) -> str | None:
    for j, sub in enumerate(task.data["subtasks"]):
        problem = verify_subtask(env, sub)
        if problem:
            return f"sub-task {j}: {problem}"
    expected = combine_answers(task, [s["answer"] for s in task.data["subtasks"]])
    if score_swarm(task, expected) != 1.0:
        return f"combining the sub-answers gives {expected!r}, not {task.answer}"
    b = task.data["budgets"]
    if not b["parallel_steps"] <= b["critical_steps"]:
        return f"budgets {b} stop a swarm"
    return None


# ------------------------------------------------------------------ combining and scoring
def _number(text: str) -> float | None:
    m = _NUMBER.search(text)
    return float(m.group().replace(",", "")) if m else None


def combine_answers(task: SwarmTask, sub_answers: list[str]) -> str:
    """The final text (``Answer: ...``) from the sub-tasks' answers, in ``data["subtasks"]`` order."""
    combine = task.data["combine"]
    keys, values = combine["keys"], [reply_value(a) for a in sub_answers]
    if combine["op"] == "list":
        return "Answer: " + "; ".join(f"{k}: {v}" for k, v in zip(keys, values) if v)
    numbers = [(x, k) for k, v in zip(keys, values) if (x := _number(v)) is not None]
    if not numbers:
        return "Answer: unknown"
    best = (
        max(numbers, key=lambda xk: xk[0])
        if combine["op"] == "argmax"
        else min(numbers, key=lambda xk: xk[0])
    )
    return f"Answer: {best[1]}"


def normalize(text: str) -> str:
    """Case, punctuation, articles and whitespace removed; thousands separators dropped (412,300 = 412300)."""
    text = re.sub(r"(?<=\d),(?=\d)", "", text.lower())
    text = re.sub(r"[^0-9a-z]+", " ", text)
    return " ".join(w for w in text.split() if w not in ("a", "an", "the"))


def answer_items(final_text: Any) -> list[str]:
    """The items of the last ``Answer:``, split on ``;`` and newlines. Lines after the answer line
    count when they are list items (``- x``, ``2. x``), or, under an empty ``Answer:``, up to the
    first blank line; other trailing prose is not an item."""
    if not isinstance(final_text, str) or extract_answer(final_text[-MAX_CHARS:]) is None:
        return []
    text = final_text[-MAX_CHARS:]
    head, *rest = text[list(_ANSWER_START.finditer(text))[-1].end() :].split("\n")
    lines = [head]
    for line in rest:
        if not line.strip():
            if any(x.strip() for x in lines):
                break
        elif head.strip() and not _BULLET.match(line):
            break
        else:
            lines.append(line)
    items = [_BULLET.sub("", part).strip() for line in lines for part in line.split(";")]
    return [i for i in items if i][:MAX_ITEMS]


def item_f1(predicted: list[str], expected: list[str]) -> float:
    """F1 of normalised items as multisets: a repeated item counts once per expected copy."""
    pred = Counter(n for n in map(normalize, predicted) if n)
    gold = Counter(n for n in map(normalize, expected) if n)
    if not pred or not gold:
        return float(not pred and not gold)
    hits = sum((pred & gold).values())
    if hits == 0:
        return 0.0
    precision, recall = hits / sum(pred.values()), hits / sum(gold.values())
    return 2 * precision * recall / (precision + recall)


def score_swarm(task: SwarmTask | dict[str, Any], final_text: Any) -> float:
    """Wide: item-F1 of the final answer's items; deep: 1.0 for a normalised exact match. Never raises."""
    try:
        if isinstance(task, dict):
            task = task_from_dict(task.get("task", task))
        if task.kind == "wide":
            return item_f1(answer_items(final_text), task.answer)
        pred = extract_answer(final_text[-MAX_CHARS:]) if isinstance(final_text, str) else None
        return float(pred is not None and normalize(pred) == normalize("; ".join(task.answer)))
    except Exception:  # the policy's text (or a damaged record) is a zero, not a crash
        return 0.0


# ------------------------------------------------------------------ (de)serialisation and loading
def task_to_dict(task: SwarmTask) -> dict[str, Any]:
    return asdict(task)


def task_from_dict(d: dict[str, Any]) -> SwarmTask:
    if not isinstance(d, dict) or d.get("kind") not in TASK_KINDS:
        raise ValueError(f"not a swarm task: {d!r:.80}")
    return SwarmTask(
        id=str(d["id"]),
        kind=d["kind"],
        question=str(d["question"]),
        answer=[str(a) for a in d["answer"]],
        width=int(d["width"]),
        data=dict(d.get("data") or {}),
    )


def task_messages(task: SwarmTask) -> list[Message]:
    """The prompt of one agent working alone in free text: the system prompt naming the tools, then
    the question."""
    return [Message("system", SYSTEM_PROMPT), Message("user", question(task, "text"))]


def load_swarm_tasks(folder: str | Path, split: str = "train") -> tuple[list[SwarmTask], Corpus]:
    """The tasks of one split of ``kimi-lab data build swarm-tasks`` shards, and their corpus."""
    from kimi_lab.data.shards import iter_shard_samples, resolve_shards
    from kimi_lab.errors import DataError

    corpus_path = Path(folder) / CORPUS_FILE
    if not corpus_path.is_file():
        raise DataError(f"{folder}: no {CORPUS_FILE} (build with `kimi-lab data build swarm-tasks`)")
    urls = resolve_shards(str(folder), split, "swarm tasks")

    def on_error(exn: Exception) -> bool:
        raise DataError(f"{folder}: unreadable swarm task shard: {exn}")

    tasks = []
    for sample in iter_shard_samples(iter(urls), on_error):
        try:
            tasks.append(task_from_dict(json.loads(sample["json"])["task"]))
        except (KeyError, TypeError, ValueError) as exn:
            raise DataError(
                f"{sample.get('__url__')}: {sample.get('__key__')} is not a swarm task ({exn})"
            ) from None
    return sorted(tasks, key=lambda t: t.id), Corpus.load(corpus_path)
