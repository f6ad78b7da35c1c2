"""Evaluation stages of ``kimi-lab experiment parl_ablation``: greedy swarm episodes and their statistics.

Every number the report compares comes with its sample size and standard error, so a
difference can be judged against noise. Sub-agents are scripted by default: they
replay a sub-task's verified calls for any prompt that names its entity (an oracle
for the look-ups); ``subagent="ckpt:PATH"`` puts a model in their place.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

from kimi_lab.swarm.types import SwarmTask


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and its standard error (0 for fewer than two values)."""
    n = len(values)
    if n == 0:
        return 0.0, 0.0
    m = sum(values) / n
    if n < 2:
        return m, 0.0
    var = sum((v - m) ** 2 for v in values) / (n - 1)
    return m, math.sqrt(var / n)


def items_assigned(task: SwarmTask, res: Any) -> float:
    """Share of the task's items whose name some assignment of the orchestrator spelled out: how much
    of the decomposition it wrote, whatever came back (0 when it never delegated)."""
    import json

    from kimi_lab.swarm.prompts import ASSIGN_TASK

    prompts = []
    for m in res.messages:
        for c in m.tool_calls if m.role == "assistant" else ():
            if c.name == ASSIGN_TASK:
                try:
                    prompts.append(str(json.loads(c.input).get("prompt", "")))
                except (ValueError, AttributeError):
                    continue
    text = "\n".join(prompts).lower()
    names = [str(s.get("entity", "")).lower() for s in task.data.get("subtasks", [])]
    return sum(bool(n) and n in text for n in names) / max(1, len(names))


def episode_row(task: SwarmTask, res: Any) -> dict[str, Any]:
    """One greedy episode, as the report tabulates it."""
    from kimi_lab.swarm.tasks import score_swarm

    return {
        "items_assigned": items_assigned(task, res),
        "task": task.id,
        "width": task.width,
        "score": 0.0 if res.budget_exceeded else score_swarm(task, res.final_text),
        "critical_steps": res.critical_steps,
        "budget": res.budget,
        "subagents": res.subagents_spawned,
        "assignments": res.assignments,
        "excess_subagents": max(0, res.subagents_spawned - task.width),
        "finish": res.completed_assignments / res.assignments if res.assignments else 0.0,
        "delegated": res.assignments > 0,
        "over_budget": res.budget_exceeded is not None,
        "failure": res.failure,
        "answer": res.answer,
    }


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Means with standard errors over episodes (shares are means of 0/1)."""
    out: dict[str, Any] = {"n": len(rows)}
    for key in (
        "score",
        "items_assigned",
        "critical_steps",
        "subagents",
        "excess_subagents",
        "finish",
        "delegated",
        "over_budget",
    ):
        m, se = mean_se([float(r[key]) for r in rows])
        out[key], out[f"{key}_se"] = m, se
    return out


def play_greedy(
    orchestrator: str,
    tasks: list[SwarmTask],
    corpus: Any,
    max_new_tokens: int,
    subagent: str = "scripted",
    budget: bool = True,
) -> list[dict[str, Any]]:
    """One greedy episode per task, all concurrently (a model's turns batched); one row each.

    ``orchestrator`` is a policy spec of ``kimi-lab swarm run`` (``ckpt:PATH``, ``fanout``,
    ``single``); ``budget=False`` lifts the critical-step budget (to measure a path's length).
    """
    from kimi_lab.config.swarm import SwarmConfig
    from kimi_lab.swarm.environment import SearchEnvironment
    from kimi_lab.swarm.play import policy_factory
    from kimi_lab.swarm.runtime import run_episode

    env = SearchEnvironment(corpus)
    orch = policy_factory(orchestrator, "orchestrator", 0.0)
    sub = policy_factory(subagent, "subagent", 0.0)
    for make in (orch, sub):
        policy = make(tasks[0])
        if hasattr(policy, "max_new_tokens"):  # a model: room for a wide turn, every episode in one batch
            policy.max_new_tokens = max_new_tokens
            policy.max_batch = max(policy.max_batch, 4 * len(tasks))
    cfg = SwarmConfig(max_orchestrator_steps=8, max_subagent_steps=8, step_timeout_s=1800.0)
    if not budget:
        # long enough for one agent doing 12 items serially (49 steps), short of a model's endless loop
        cfg = SwarmConfig(max_critical_steps=10_000, max_orchestrator_steps=64, step_timeout_s=1800.0)

    async def main() -> list[Any]:
        return list(await asyncio.gather(*(run_episode(t, env, orch(t), sub(t), cfg) for t in tasks)))

    return [episode_row(t, r) for t, r in zip(tasks, asyncio.run(main()), strict=True)]


def evaluate(
    ckpt: Path, tasks_dir: Path, n: int, max_new_tokens: int, subagent: str = "scripted"
) -> dict[str, Any]:
    """Greedy held-out score of a checkpoint orchestrator on the first ``n`` val tasks."""
    from kimi_lab.swarm.tasks import load_swarm_tasks

    tasks, corpus = load_swarm_tasks(tasks_dir, "val")
    rows = play_greedy(f"ckpt:{ckpt}", tasks[:n], corpus, max_new_tokens, subagent)
    return {**summarize(rows), "subagent": subagent, "rows": rows}


def width_sweep(
    ckpt: Path | None,
    tasks_dir: Path,
    widths: tuple[int, ...],
    per_width: int,
    seed: int,
    max_new_tokens: int,
) -> list[dict[str, Any]]:
    """Critical steps against task width on held-out (val-world) tasks, without a budget: the
    scripted single agent, the scripted fan-out, and (``ckpt``) the trained orchestrator."""
    from kimi_lab.swarm.corpus import Corpus
    from kimi_lab.swarm.tasks import CORPUS_FILE, generate_tasks

    corpus = Corpus.load(tasks_dir / CORPUS_FILE)
    policies = {"single": "single", "fanout": "fanout"}
    if ckpt is not None:
        policies["trained"] = f"ckpt:{ckpt}"
    out = []
    for w in widths:
        tasks = generate_tasks(per_width, seed + 1_000 + w, ("wide",), (w, w), corpus, "val")
        for name, spec in policies.items():
            rows = play_greedy(spec, tasks, corpus, max_new_tokens, budget=False)
            s = summarize(rows)
            out.append(
                {
                    "width": w,
                    "policy": name,
                    **{k: s[k] for k in ("n", "score", "score_se", "critical_steps", "critical_steps_se")},
                    "subagents": s["subagents"],
                    "budget": sum(t.data["budgets"]["critical_steps"] for t in tasks) / len(tasks),
                }
            )
    return out
