"""Evaluation stages of ``kimi-lab experiment parl_ablation``: greedy swarm episodes and their statistics.

Every number the report compares comes with its sample size and standard error, so a
difference can be judged against noise. Sub-agents are scripted by default: they
replay a sub-task's verified calls for any prompt that names its entity (an oracle
for the look-ups); ``subagent="ckpt:PATH"`` puts a model in their place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kimi_lab.config.swarm import SwarmConfig
from kimi_lab.swarm.types import SwarmTask

# Enough for one agent doing 12 items serially (61 steps in the index language), short of a
# model's endless loop; a batched turn on a loaded 2-core machine can take minutes.
UNBUDGETED = SwarmConfig(max_critical_steps=10_000, max_orchestrator_steps=64, step_timeout_s=1800.0)


def play_greedy(
    orchestrator: str,
    tasks: list[SwarmTask],
    corpus: Any,
    cfg: SwarmConfig,
    max_new_tokens: int,
    subagent: str = "scripted",
    subagent_tokens: int = 256,
    traces: list[Path | None] | None = None,
) -> list[dict[str, Any]]:
    """One greedy episode per task, all concurrently (a model's turns batched); one summary row each.

    ``orchestrator`` is a policy spec of ``kimi-lab swarm run`` (``ckpt:PATH``, ``fanout``,
    ``single``); ``max_new_tokens`` per orchestrator turn, ``subagent_tokens`` per sub-agent turn;
    ``traces[i]``: task i's trace file, if any."""
    from kimi_lab.swarm.environment import SearchEnvironment
    from kimi_lab.swarm.play import play, policy_factory
    from kimi_lab.swarm.summary import EpisodeSummary

    batch = 4 * len(tasks)  # every episode's turns in one batch
    orch = policy_factory(orchestrator, "orchestrator", 0.0, max_new_tokens, batch)
    sub = policy_factory(subagent, "subagent", 0.0, subagent_tokens, batch)
    results = play(tasks, SearchEnvironment(corpus), orch, sub, cfg, traces=traces)
    return [EpisodeSummary.of(t, r).to_dict() for t, r in zip(tasks, results, strict=True)]


def evaluate(
    ckpt: Path,
    tasks_dir: Path,
    n: int,
    cfg: SwarmConfig,
    max_new_tokens: int,
    subagent: str = "scripted",
    subagent_tokens: int = 256,
    trace_dir: Path | None = None,
    n_traces: int = 4,
) -> dict[str, Any]:
    """Greedy held-out score of a checkpoint orchestrator on the first ``n`` val tasks (an error when
    the folder holds fewer: a smaller sample would pass for the asked one). The first ``n_traces``
    episodes leave their traces in ``trace_dir`` (a run's ``swarm/`` folder: the dashboard draws them)."""
    from kimi_lab.errors import DataError
    from kimi_lab.swarm.search_tasks import load_swarm_tasks
    from kimi_lab.swarm.summary import EpisodeSummary, summarize

    tasks, corpus = load_swarm_tasks(tasks_dir, "val")
    if len(tasks) < n:
        raise DataError(f"{tasks_dir}: {len(tasks)} held-out tasks, {n} asked for")
    tasks = tasks[:n]
    traces = None
    if trace_dir is not None:
        traces = [trace_dir / f"eval-{t.id}.jsonl" if i < n_traces else None for i, t in enumerate(tasks)]
    rows = play_greedy(f"ckpt:{ckpt}", tasks, corpus, cfg, max_new_tokens, subagent, subagent_tokens, traces)
    means = summarize([EpisodeSummary(**r) for r in rows])
    return {**means, "subagent": subagent, "rows": rows}


def width_sweep(
    ckpt: Path | None,
    tasks_dir: Path,
    widths: tuple[int, ...],
    per_width: int,
    seed: int,
    actions: str,
    max_new_tokens: int,
    slack: int,
) -> list[dict[str, Any]]:
    """Critical steps against task width on held-out (val-world) tasks, without a budget: the
    scripted single agent, the scripted fan-out, and (``ckpt``) the trained orchestrator (``budget``:
    the budget such tasks get with ``slack``, for the plot)."""
    from dataclasses import replace

    from kimi_lab.swarm.corpus import Corpus
    from kimi_lab.swarm.search_tasks import CORPUS_FILE, generate_tasks
    from kimi_lab.swarm.summary import EpisodeSummary, summarize

    corpus = Corpus.load(tasks_dir / CORPUS_FILE)
    policies = {"single": "single", "fanout": "fanout"}
    if ckpt is not None:
        policies["trained"] = f"ckpt:{ckpt}"
    out = []
    for w in widths:
        tasks = generate_tasks(per_width, seed + 1_000 + w, ("wide",), (w, w), corpus, "val", slack)
        for name, spec in policies.items():
            cfg = replace(UNBUDGETED, actions=actions, single_agent=name == "single")
            rows = play_greedy(spec, tasks, corpus, cfg, max_new_tokens)
            s = summarize([EpisodeSummary(**r) for r in rows])
            out.append(
                {
                    "width": w,
                    "policy": name,
                    **{k: s[k] for k in ("n", "score", "score_se", "critical_steps", "critical_steps_se")},
                    "subagents": s["subagents"],
                    "truncated_turns": s["truncated_turns"],
                    "budget": sum(t.data["budgets"]["critical_steps"] for t in tasks) / len(tasks),
                }
            )
    return out
