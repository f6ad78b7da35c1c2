"""``kimi-lab data build swarm-sft``: orchestrator conversations from the scripted swarm baselines.

PARL trains an orchestrator by reinforcement; a small model must first be able to
write the swarm's tool calls at all. This builder plays swarm tasks (the train
world of the same generated corpus as ``swarm-tasks``) with the scripted policies
through the real runtime, and keeps the orchestrator's side of each episode as a
chat sample for phase ``sft``: a ``--fanout-fraction`` of the episodes delegate
(create a sub-agent per sub-task, assign them all in one stage, combine the
results), the rest work serially (every look-up by the orchestrator itself, with
no step budget so they finish). The mixture is the prior PARL then reshapes: with
the tasks' critical-step budgets only the delegating behaviour scores.
"""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any

from data_pipelines.common import ShardSink
from kimi_lab.config.swarm import SwarmConfig
from kimi_lab.data.schema import make_record, sample_key
from kimi_lab.errors import DataError
from kimi_lab.swarm.corpus import build_corpus
from kimi_lab.swarm.environment import SearchEnvironment
from kimi_lab.swarm.result import EpisodeResult
from kimi_lab.swarm.runtime import run_episode
from kimi_lab.swarm.scripted import FanOutPolicy, ScriptedSubagent, SingleAgentPolicy
from kimi_lab.swarm.tasks import TASK_KINDS, generate_tasks, score_swarm
from kimi_lab.swarm.types import SwarmTask

BUILDER_VERSION = "swarm-sft/1"


def play_scripted(task: SwarmTask, env: SearchEnvironment, fanout: bool) -> EpisodeResult:
    orchestrator = FanOutPolicy(task) if fanout else SingleAgentPolicy(task)
    # No critical-step budget: the serial demonstrations must run to their answer.
    cfg = SwarmConfig(max_critical_steps=10_000, max_orchestrator_steps=10_000)
    return asyncio.run(run_episode(task, env, orchestrator, ScriptedSubagent(task), cfg))


def build_swarm_sft(
    out: str | Path,
    n: int = 400,
    seed: int = 0,
    fanout_fraction: float = 0.5,
    val_fraction: float = 0.05,
    kinds: tuple[str, ...] = TASK_KINDS,
    width_range: tuple[int, int] = (2, 4),
    n_companies: int = 64,
    shard_bytes: int = 1_000_000,
) -> dict[str, Any]:
    if not 0.0 <= fanout_fraction <= 1.0:
        raise DataError(f"--fanout-fraction {fanout_fraction}: expected a number in [0, 1]")
    if n < 1:
        raise DataError(f"swarm-sft: --n {n} must be >= 1")
    corpus = build_corpus(seed, n_companies=n_companies)
    env = SearchEnvironment(corpus)
    try:
        tasks = generate_tasks(n, seed + 7_919, kinds, width_range, corpus, "train")
    except ValueError as exn:
        raise DataError(f"swarm-sft: {exn}") from None
    rng = random.Random(seed)
    sink = ShardSink(out, val_fraction, shard_bytes)
    try:
        for i, task in enumerate(tasks):
            fanout = rng.random() < fanout_fraction
            res = play_scripted(task, env, fanout)
            style = "fanout" if fanout else "serial"
            if res.failure or score_swarm(task, res.final_text) < 1.0:
                sink.count("failed")  # a demonstration must be right
                continue
            record = make_record("chat", f"swarm-sft-{style}", generator=BUILDER_VERSION, seed=seed, index=i)
            record["messages"] = [m.to_dict() for m in res.messages]
            record["swarm"] = {"task": task.id, "style": style, "critical_steps": res.critical_steps}
            content = json.dumps(record, sort_keys=True).encode()
            sink.write({"__key__": sample_key(f"swarm-sft-{style}", content), "json": content})
            sink.count(style)
    finally:
        manifest = sink.close(
            "swarm-sft",
            "chat",
            seed,
            BUILDER_VERSION,
            fanout_fraction=fanout_fraction,
            kinds=list(kinds),
            width_range=list(width_range),
        )
    return manifest
