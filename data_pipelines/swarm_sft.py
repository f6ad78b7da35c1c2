"""``kimi-lab data build swarm-sft``: orchestrator conversations from the scripted swarm baselines.

PARL trains an orchestrator by reinforcement; a small model must first be able to
write the swarm's tool calls at all. This builder plays search tasks with the
scripted policies through the real runtime and keeps the orchestrator's side of each
episode as a chat sample for phase ``sft``, in three styles:

- ``fanout``: a sub-agent per sub-task, all assigned in one stage, results combined;
- ``overspawn``: the same, plus 1..width extra sub-agents given vague work that never
  returns a result (spurious parallelism);
- ``serial``: every look-up by the orchestrator itself (no step budget, so it finishes).

The mixture (``fanout_fraction``, ``overspawn_fraction``, the rest serial) is the prior
PARL reshapes: with the tasks' critical-step budgets only delegation scores.

The demonstrations come from a corpus of their own (``seed + DEMO_CORPUS_OFFSET``,
``n_companies`` large), so their entity names are shared with no task PARL trains or is
evaluated on and almost never repeat: a model can only imitate them by copying names
from its context, which is what a held-out task asks of it.
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
from kimi_lab.swarm.types import Policy, SwarmTask

STYLES = ("fanout", "overspawn", "serial")
DEMO_CORPUS_OFFSET = 1_000_003  # the demonstrations' corpus seed, away from any task corpus's

BUILDER_VERSION = "swarm-sft/3"


def play_scripted(task: SwarmTask, env: SearchEnvironment, style: str, extra: int = 0) -> EpisodeResult:
    orchestrator: Policy
    if style == "serial":
        orchestrator = SingleAgentPolicy(task)
    else:
        orchestrator = FanOutPolicy(task, extra=extra if style == "overspawn" else 0, interleave=True)
    # No critical-step budget: the serial demonstrations must run to their answer.
    cfg = SwarmConfig(max_critical_steps=10_000, max_orchestrator_steps=10_000, max_subagent_steps=6)
    return asyncio.run(run_episode(task, env, orchestrator, ScriptedSubagent(task), cfg))


def build_swarm_sft(
    out: str | Path,
    n: int = 400,
    seed: int = 0,
    fanout_fraction: float = 0.5,
    overspawn_fraction: float = 0.0,
    val_fraction: float = 0.05,
    kinds: tuple[str, ...] = TASK_KINDS,
    width_range: tuple[int, int] = (2, 4),
    n_companies: int = 400,
    shard_bytes: int = 1_000_000,
) -> dict[str, Any]:
    for flag, v in (("--fanout-fraction", fanout_fraction), ("--overspawn-fraction", overspawn_fraction)):
        if not 0.0 <= v <= 1.0:
            raise DataError(f"{flag} {v}: expected a number in [0, 1]")
    if fanout_fraction + overspawn_fraction > 1.0:
        raise DataError(
            f"--fanout-fraction {fanout_fraction} + --overspawn-fraction {overspawn_fraction} exceed 1"
        )
    if n < 1:
        raise DataError(f"swarm-sft: --n {n} must be >= 1")
    corpus = build_corpus(seed + DEMO_CORPUS_OFFSET, n_companies=n_companies)
    env = SearchEnvironment(corpus)
    try:
        tasks = generate_tasks(n, seed + 7_919, kinds, width_range, corpus, "train")
    except ValueError as exn:
        raise DataError(f"swarm-sft: {exn}") from None
    rng = random.Random(seed)
    sink = ShardSink(out, val_fraction, shard_bytes)
    try:
        for i, task in enumerate(tasks):
            u = rng.random()
            style = (
                "fanout"
                if u < fanout_fraction
                else "overspawn"
                if u < fanout_fraction + overspawn_fraction
                else "serial"
            )
            res = play_scripted(task, env, style, extra=rng.randint(1, task.width))
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
            overspawn_fraction=overspawn_fraction,
            corpus_seed=seed + DEMO_CORPUS_OFFSET,
            n_companies=n_companies,
            kinds=list(kinds),
            width_range=list(width_range),
        )
    return manifest
