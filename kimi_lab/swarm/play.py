"""Playing swarm episodes: the one play loop, the policies named by a spec, and ``kimi-lab swarm run``.

``play`` runs every episode of a batch concurrently (a model's turns are batched by its
policy) and is what phase parl's rollouts and validation, the PARL ablation's
evaluations, the demonstration builder and ``kimi-lab swarm run`` all call.

Policies are named by a spec (``policy_factory``):

- ``fanout`` — scripted orchestrator: creates one sub-agent per sub-task and assigns
  them all in one stage (the parallel baseline);
- ``single`` — scripted agent that does every look-up itself, one per step (serial);
- ``ckpt:PATH`` — a kimi_lab checkpoint, sampled with a KV cache, turns batched;
- ``openai:URL[#MODEL]`` — any OpenAI-compatible server (``kimi-lab serve``, vLLM...).

Sub-agents take ``scripted`` (the task's verified calls), ``ckpt:PATH`` or
``openai:URL[#MODEL]``. ``run_swarm``'s output folder is a run directory the dashboard
lists: ``swarm/<episode>.jsonl`` traces, ``episodes.jsonl`` (one ``EpisodeSummary`` per
episode) and ``status.json``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kimi_lab.config.swarm import SwarmConfig
from kimi_lab.errors import ConfigError
from kimi_lab.metrics import SWARM_DIR, SWARM_EPISODES_FILE
from kimi_lab.swarm.result import EpisodeResult
from kimi_lab.swarm.reward import perf_score
from kimi_lab.swarm.runtime import run_episode
from kimi_lab.swarm.summary import EpisodeSummary, summarize
from kimi_lab.swarm.types import Environment, Policy, SwarmTask
from kimi_lab.tracking.status import write_status

PolicyFor = Callable[[SwarmTask], Policy]
Reward = Callable[[SwarmTask, EpisodeResult], dict[str, float]]


def perf_reward(task: SwarmTask, res: EpisodeResult) -> dict[str, float]:
    """The reward of an evaluation: r_perf alone."""
    return {"perf": perf_score(task, res)}


def play(
    tasks: list[SwarmTask],
    env: Environment,
    orchestrator: PolicyFor,
    subagent: PolicyFor,
    cfg: SwarmConfig,
    *,
    repeats: int = 1,
    traces: list[Path | None] | None = None,
    reward: Reward = perf_reward,
) -> list[EpisodeResult]:
    """``repeats`` episodes of every task (grouped: task 0's first), all played concurrently.

    ``traces[i]``, when given, is episode i's trace file; ``reward(task, result)`` is stored in
    each result and its trace."""
    episodes = [t for t in tasks for _ in range(repeats)]
    if traces is not None and len(traces) != len(episodes):
        raise ValueError(f"{len(traces)} trace paths for {len(episodes)} episodes")

    async def main() -> list[EpisodeResult]:
        plays = [
            run_episode(t, env, orchestrator(t), subagent(t), cfg, traces[i] if traces else None, reward)
            for i, t in enumerate(episodes)
        ]
        return list(await asyncio.gather(*plays))

    return asyncio.run(main())


def policy_factory(
    spec: str,
    role: str,
    temperature: float = 0.0,
    max_new_tokens: int = 256,
    max_batch: int = 16,
) -> PolicyFor:
    """A function task -> policy for ``spec`` (models are loaded once and shared; ``max_new_tokens``
    per turn and ``max_batch`` turns sampled together)."""
    from kimi_lab.swarm.scripted import FanOutPolicy, ScriptedSubagent, SingleAgentPolicy

    if spec == "fanout" and role == "orchestrator":
        return FanOutPolicy
    if spec == "single" and role == "orchestrator":
        return SingleAgentPolicy
    if spec == "scripted" and role == "subagent":
        return ScriptedSubagent
    if spec.startswith("ckpt:"):
        from kimi_lab.swarm.checkpoint_policy import load_checkpoint_policy

        path = spec[len("ckpt:") :]
        if not Path(path).is_file():
            raise ConfigError(f"{role} policy {spec}: no such checkpoint file")
        _, policy = load_checkpoint_policy(
            path,
            temperature=temperature,
            max_new_tokens=max_new_tokens,
            max_batch=max_batch,
            name=f"{role}:{Path(path).name}",
        )
        return lambda task: policy
    if spec.startswith("openai:"):
        from kimi_lab.swarm.openai_policy import OpenAIPolicy

        url, _, model = spec[len("openai:") :].partition("#")
        client = OpenAIPolicy(url, model=model, temperature=temperature, max_tokens=max_new_tokens)
        return lambda task: client
    choices = (
        "fanout, single, ckpt:PATH, openai:URL[#MODEL]"
        if role == "orchestrator"
        else ("scripted, ckpt:PATH, openai:URL[#MODEL]")
    )
    raise ConfigError(f"{role} policy {spec!r}: choose from {choices}")


def run_swarm(
    tasks_dir: str,
    out: Path,
    orchestrator: str = "fanout",
    subagent: str = "scripted",
    split: str = "val",
    n: int = 1,
    max_critical_steps: int | None = None,
    temperature: float = 0.0,
    single_agent: bool = False,
    actions: str = "index",
    max_new_tokens: int = 256,
) -> dict[str, Any]:
    """Play the first ``n`` tasks of ``split``; returns the summary it also prints."""
    from kimi_lab.swarm.environment import SearchEnvironment
    from kimi_lab.swarm.search_tasks import load_swarm_tasks

    tasks, corpus = load_swarm_tasks(tasks_dir, split)
    if not tasks:
        raise ConfigError(f"{tasks_dir}: no {split} tasks")
    tasks = tasks[:n]
    orch = policy_factory(orchestrator, "orchestrator", temperature, max_new_tokens, max(16, len(tasks)))
    sub = policy_factory(subagent, "subagent", 0.0, max_new_tokens, max(16, len(tasks)))
    cfg = SwarmConfig(actions=actions, max_critical_steps=max_critical_steps, single_agent=single_agent)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    write_status(out, "running", "swarm", 0, len(tasks), started, {})
    traces: list[Path | None] = [out / SWARM_DIR / f"{t.id}.jsonl" for t in tasks]
    results = play(tasks, SearchEnvironment(corpus), orch, sub, cfg, traces=traces)
    episodes = [EpisodeSummary.of(t, r) for t, r in zip(tasks, results, strict=True)]
    rows = [{**e.to_dict(), "trace": str(trace)} for e, trace in zip(episodes, traces, strict=True)]
    with open(out / SWARM_EPISODES_FILE, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    means = summarize(episodes)
    final = {key: means[key] for key in ("score", "critical_steps", "total_steps", "over_budget")}
    write_status(out, "finished", "swarm", len(tasks), len(tasks), started, final)
    return {
        "orchestrator": orchestrator,
        "subagent": subagent,
        "actions": actions,
        "episodes": len(rows),
        **final,
        "out": str(out),
        "episodes_detail": rows,
    }
