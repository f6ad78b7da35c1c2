"""``kimi-lab data build swarm-tasks``: wide and deep search tasks for the agent swarm (PARL).

Each sample is one task as a chat record (``modality: "chat"``): ``messages`` is
the prompt (system naming the search/open tools, then the question) and ``task``
the whole ``SwarmTask`` (answer, width, sub-task decomposition with verified tool
calls, combine rule, step budgets). The corpus the tools search is written beside
the shards as ``corpus.jsonl``; ``kimi_lab.swarm.search_tasks.load_swarm_tasks`` reads both.

Held out for real: val tasks come from the corpus's val world, whose companies,
people, cities and rivers no train task mentions or reaches (links never cross
worlds), and every sub-task's calls are replayed against the environment first.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from data_pipelines.common import ShardSink
from kimi_lab.data.schema import make_record, sample_key
from kimi_lab.errors import DataError
from kimi_lab.swarm.corpus import build_corpus
from kimi_lab.swarm.search_tasks import (
    CORPUS_FILE,
    SLACK_STEPS,
    TASK_KINDS,
    generate_tasks,
    task_messages,
    task_to_dict,
)
from kimi_lab.swarm.types import SwarmTask

BUILDER_VERSION = "swarm-tasks/3"  # /3: answer formats per action language, budgets with --slack


def task_sample(task: SwarmTask, **provenance: Any) -> dict[str, Any]:
    record = make_record("chat", f"swarm-task-{task.kind}", generator=BUILDER_VERSION, **provenance)
    record["messages"] = [m.to_dict() for m in task_messages(task)]
    record["task"] = {**task_to_dict(task), "family": f"swarm-{task.kind}"}
    content = json.dumps(record, sort_keys=True).encode()
    return {"__key__": sample_key(f"swarm-{task.kind}", content), "json": content}


def build_swarm_tasks(
    out: str | Path,
    n: int = 200,
    seed: int = 0,
    val_fraction: float = 0.2,
    kinds: Sequence[str] = TASK_KINDS,
    width_range: tuple[int, int] = (3, 6),
    n_companies: int = 64,
    shard_bytes: int = 256_000,
    slack: int = SLACK_STEPS,
) -> dict[str, Any]:
    """``n`` tasks, ``round(n * val_fraction)`` of them in val; the corpus as ``out/corpus.jsonl``.
    ``slack``: critical steps a swarm has beyond its fastest path (``kimi_lab.swarm.search_tasks.step_budgets``:
    a larger slack lets one agent working alone finish the narrower tasks)."""
    kinds = tuple(kinds)
    unknown = [k for k in kinds if k not in TASK_KINDS]
    if not kinds or unknown:
        raise DataError(f"--kinds {','.join(kinds)}: choose from {', '.join(TASK_KINDS)}")
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"--val-fraction {val_fraction}: expected a number in [0, 1)")
    if n < 0 or not 2 <= width_range[0] <= width_range[1] or slack < 0:
        raise DataError(
            f"swarm-tasks: need n >= 0, 2 <= min width <= max width and slack >= 0 "
            f"(got {n}, {width_range}, {slack})"
        )
    n_val = round(n * val_fraction)
    corpus = build_corpus(seed, n_companies=n_companies)
    try:
        plans = {
            split: generate_tasks(count, seed, kinds, width_range, corpus, split, slack)
            for split, count in (("train", n - n_val), ("val", n_val))
        }
    except ValueError as exn:
        raise DataError(f"swarm-tasks: {exn}") from None
    sink = ShardSink(out, val_fraction, shard_bytes)
    corpus.save(sink.out / CORPUS_FILE)
    try:
        for split, tasks in plans.items():
            for i, task in enumerate(tasks):
                sink.write(task_sample(task, seed=seed, index=i, split=split), split=split)
                sink.count(task.kind)
                sink.count("verified")
    finally:
        manifest = sink.close(
            "swarm-tasks",
            "chat",
            seed,
            BUILDER_VERSION,
            kinds=list(kinds),
            width_range=list(width_range),
            slack=slack,
            corpus={"file": CORPUS_FILE, "seed": seed, "docs": len(corpus), "n_companies": n_companies},
        )
    return manifest
