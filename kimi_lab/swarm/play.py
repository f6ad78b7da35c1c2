"""``kimi-lab swarm run``: play swarm episodes with any policy and keep their traces.

Policies are named by a spec:

- ``fanout`` — scripted orchestrator: creates one sub-agent per sub-task and assigns
  them all in one stage (the parallel baseline);
- ``single`` — scripted agent that does every look-up itself, one per step (serial);
- ``ckpt:PATH`` — a kimi_lab checkpoint, sampled with a KV cache, turns batched;
- ``openai:URL[#MODEL]`` — any OpenAI-compatible server (``kimi-lab serve``, vLLM...).

Sub-agents take ``scripted`` (the task's verified calls), ``ckpt:PATH`` or
``openai:URL[#MODEL]``. The output folder is a run directory the dashboard lists:
``swarm/<episode>.jsonl`` traces, ``episodes.jsonl`` (one summary per episode) and
``status.json``.
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
from kimi_lab.metrics import STATUS_FILE, SWARM_DIR
from kimi_lab.swarm.result import EpisodeResult
from kimi_lab.swarm.runtime import run_episode
from kimi_lab.swarm.types import Policy, SwarmTask

EPISODES_FILE = "episodes.jsonl"


def policy_factory(spec: str, role: str, temperature: float = 0.0) -> Callable[[SwarmTask], Policy]:
    """A function task -> policy for ``spec`` (models are loaded once and shared)."""
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
        _, policy = load_checkpoint_policy(path, temperature=temperature, name=f"{role}:{Path(path).name}")
        return lambda task: policy
    if spec.startswith("openai:"):
        from kimi_lab.swarm.openai_policy import OpenAIPolicy

        url, _, model = spec[len("openai:") :].partition("#")
        client = OpenAIPolicy(url, model=model, temperature=temperature)
        return lambda task: client
    choices = (
        "fanout, single, ckpt:PATH, openai:URL[#MODEL]"
        if role == "orchestrator"
        else ("scripted, ckpt:PATH, openai:URL[#MODEL]")
    )
    raise ConfigError(f"{role} policy {spec!r}: choose from {choices}")


def play_tasks(
    tasks: list[SwarmTask],
    env: Any,
    orchestrator: Callable[[SwarmTask], Policy],
    subagent: Callable[[SwarmTask], Policy],
    out: Path,
    cfg: SwarmConfig,
    progress: Callable[[EpisodeResult], None] | None = None,
) -> list[EpisodeResult]:
    """Every task once, concurrently; a trace per episode under ``out/swarm``."""
    from kimi_lab.swarm.tasks import score_swarm

    (out / SWARM_DIR).mkdir(parents=True, exist_ok=True)

    def reward(task: SwarmTask, res: EpisodeResult) -> dict[str, float]:
        return {"perf": 0.0 if res.budget_exceeded else score_swarm(task, res.final_text)}

    async def one(task: SwarmTask) -> EpisodeResult:
        res = await run_episode(
            task,
            env,
            orchestrator(task),
            subagent(task),
            cfg,
            trace=out / SWARM_DIR / f"{task.id}.jsonl",
            reward=reward,
        )
        if progress:
            progress(res)
        return res

    async def main() -> list[EpisodeResult]:
        return list(await asyncio.gather(*(one(t) for t in tasks)))

    return asyncio.run(main())


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
) -> dict[str, Any]:
    """Play the first ``n`` tasks of ``split``; returns the summary it also prints."""
    from kimi_lab.swarm.environment import SearchEnvironment
    from kimi_lab.swarm.tasks import load_swarm_tasks

    tasks, corpus = load_swarm_tasks(tasks_dir, split)
    if not tasks:
        raise ConfigError(f"{tasks_dir}: no {split} tasks")
    tasks = tasks[:n]
    env = SearchEnvironment(corpus)
    orch = policy_factory(orchestrator, "orchestrator", temperature)
    sub = policy_factory(subagent, "subagent", 0.0)

    cfg = SwarmConfig(max_critical_steps=max_critical_steps, single_agent=single_agent)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    results = play_tasks(tasks, env, orch, sub, out, cfg)
    rows = []
    for task, res in zip(tasks, results, strict=True):
        rows.append(
            {
                "task": task.id,
                "kind": task.kind,
                "width": task.width,
                "score": (res.reward or {}).get("perf", 0.0),
                "critical_steps": res.critical_steps,
                "budget": res.budget,
                "total_steps": res.total_steps,
                "subagents": res.subagents_spawned,
                "parallelism": res.parallelism,
                "over_budget": res.budget_exceeded,
                "errors": res.errors,
                "answer": res.answer,
                "trace": str(out / SWARM_DIR / f"{task.id}.jsonl"),
            }
        )
    with open(out / EPISODES_FILE, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    k = len(rows)
    summary = {
        "orchestrator": orchestrator,
        "subagent": subagent,
        "episodes": k,
        "score": sum(r["score"] for r in rows) / k,
        "critical_steps": sum(r["critical_steps"] for r in rows) / k,
        "total_steps": sum(r["total_steps"] for r in rows) / k,
        "over_budget": sum(r["over_budget"] is not None for r in rows) / k,
        "out": str(out),
        "episodes_detail": rows,
    }
    status = {
        "status": "finished",
        "experiment": "swarm",
        "step": k,
        "max_steps": k,
        "started": started,
        "updated": time.time(),
        "final": {key: summary[key] for key in ("score", "critical_steps", "total_steps", "over_budget")},
    }
    (out / STATUS_FILE).write_text(json.dumps(status, indent=2))
    return summary
