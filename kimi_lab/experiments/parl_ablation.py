"""``kimi-lab experiment parl_ablation``: which parts of the PARL reward matter (K2.5 section 7)?

The chain, each training stage an ordinary run folder under ``OUT`` (resumable):

1. ``sft``: an orchestrator that can write the swarm's tool calls, by SFT on the
   scripted baselines' episodes, half delegating (fan-out), half serial.
2. three PARL arms from that checkpoint, same seeds and tasks, scripted (frozen)
   sub-agents:
   - ``perf``: r = r_perf;
   - ``perf_parallel``: r = r_perf + lambda1 r_parallel (lambda1 held);
   - ``full``: r = r_perf + lambda1 r_parallel + lambda2 r_finish, both annealed to 0.
3. greedy evaluation of the SFT model and of every arm on held-out tasks, and the
   scripted single-agent and fan-out baselines on tasks of each width: critical
   steps against width.

``report.md`` / ``report.json`` / ``parl_ablation.png`` put the numbers beside
the report's claims: critical steps grow with width for one agent and stay flat for
the swarm, and the auxiliary rewards prevent serial collapse and spurious parallelism.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kimi_lab.errors import KimiLabError
from kimi_lab.experiments.zero_vision import train_stage

TAG = "parl_ablation"
ARMS = {
    "perf": {"lambda1": 0.0, "lambda2": 0.0, "anneal": False},
    "perf_parallel": {"lambda1": 0.5, "lambda2": 0.0, "anneal": False},
    "full": {"lambda1": 0.5, "lambda2": 0.5, "anneal": True},
}


@dataclass(frozen=True)
class Scale:
    model: str
    sft_steps: int
    parl_steps: int
    n_tasks: int
    n_sft: int
    eval_tasks: int
    widths: tuple[int, ...]  # for the critical-steps-vs-width sweep of the scripted baselines
    width_range: tuple[int, int]  # of the training and evaluation tasks
    samples_per_prompt: int
    prompts_per_step: int
    max_new_tokens: int
    extra: tuple[str, ...] = ()


SCALES = {
    # About 60 minutes on 2 CPU cores (a PARL step plays 4 episodes of up to 8 orchestrator turns).
    "small": Scale(
        "small", 300, 16, 240, 600, 12, (2, 3, 4, 6, 8, 12), (2, 4), 4, 1, 160, ("data.batch_size=2",)
    ),
    "tiny": Scale(
        "tiny",
        4,
        2,
        24,
        24,
        2,
        (2, 4),
        (2, 3),
        2,
        1,
        16,
        (
            "trainer.precision=32-true",
            "trainer.limit_val_batches=1",
            "phase.schedule.warmup_steps=1",
            "data.batch_size=2",
            "model.max_seq_len=2048",
        ),
    ),
}


# ----------------------------------------------------------------------- data
def ensure_data(data_dir: Path, scale: Scale, seed: int) -> dict[str, Path]:
    from data_pipelines.swarm_sft import build_swarm_sft
    from data_pipelines.swarm_tasks import build_swarm_tasks

    paths = {"tasks": data_dir / "swarm-tasks", "sft": data_dir / "swarm-sft"}
    if not (paths["tasks"] / "manifest.json").is_file():
        print(f"[{TAG}] building swarm tasks -> {paths['tasks']}", flush=True)
        build_swarm_tasks(
            paths["tasks"], n=scale.n_tasks, seed=seed, val_fraction=0.25, width_range=scale.width_range
        )
    if not (paths["sft"] / "manifest.json").is_file():
        print(f"[{TAG}] building orchestrator demonstrations -> {paths['sft']}", flush=True)
        build_swarm_sft(
            paths["sft"], n=scale.n_sft, seed=seed, fanout_fraction=0.5, width_range=scale.width_range
        )
    return paths


# ------------------------------------------------------------------ evaluation
def evaluate_orchestrator(ckpt: Path, tasks_dir: Path, n: int, max_new_tokens: int) -> dict[str, Any]:
    """Greedy episodes of a checkpoint orchestrator (scripted sub-agents) on held-out tasks."""
    from kimi_lab.config.swarm import SwarmConfig
    from kimi_lab.swarm.environment import SearchEnvironment
    from kimi_lab.swarm.play import policy_factory
    from kimi_lab.swarm.runtime import run_episode
    from kimi_lab.swarm.scripted import ScriptedSubagent
    from kimi_lab.swarm.tasks import load_swarm_tasks, score_swarm

    tasks, corpus = load_swarm_tasks(tasks_dir, "val")
    tasks = tasks[:n]
    env = SearchEnvironment(corpus)
    policy = policy_factory(f"ckpt:{ckpt}", "orchestrator", 0.0)(tasks[0])
    policy.max_new_tokens = max_new_tokens

    async def main() -> list[Any]:
        return list(
            await asyncio.gather(
                *(
                    run_episode(
                        t,
                        env,
                        policy,
                        ScriptedSubagent(t),
                        SwarmConfig(max_orchestrator_steps=8),
                    )
                    for t in tasks
                )
            )
        )

    results = asyncio.run(main())
    rows = [
        {
            "task": t.id,
            "kind": t.kind,
            "width": t.width,
            "score": 0.0 if r.budget_exceeded else score_swarm(t, r.final_text),
            "critical_steps": r.critical_steps,
            "subagents": r.subagents_spawned,
            "assignments": r.assignments,
            "parallelism": r.parallelism,
            "over_budget": r.budget_exceeded is not None,
            "delegated": r.assignments > 0,
        }
        for t, r in zip(tasks, results, strict=True)
    ]
    k = max(1, len(rows))
    return {
        "n": len(rows),
        "score": sum(r["score"] for r in rows) / k,
        "delegated": sum(r["delegated"] for r in rows) / k,
        "critical_steps": sum(r["critical_steps"] for r in rows) / k,
        "subagents": sum(r["subagents"] for r in rows) / k,
        "over_budget": sum(r["over_budget"] for r in rows) / k,
        "rows": rows,
    }


def width_sweep(widths: tuple[int, ...], seed: int) -> list[dict[str, Any]]:
    """Scripted single agent vs fan-out swarm: critical steps and score per task width (no budget)."""
    from kimi_lab.config.swarm import SwarmConfig
    from kimi_lab.swarm.corpus import build_corpus
    from kimi_lab.swarm.environment import SearchEnvironment
    from kimi_lab.swarm.runtime import run_episode
    from kimi_lab.swarm.scripted import FanOutPolicy, ScriptedSubagent, SingleAgentPolicy
    from kimi_lab.swarm.tasks import generate_tasks, score_swarm

    corpus = build_corpus(seed, n_companies=max(64, 4 * max(widths)))
    env = SearchEnvironment(corpus)
    out = []
    for w in widths:
        tasks = generate_tasks(4, seed + w, ("wide",), (w, w), corpus, "train")
        for name, make in (("single", SingleAgentPolicy), ("swarm", FanOutPolicy)):
            cfg = SwarmConfig(max_critical_steps=10_000, max_orchestrator_steps=10_000)
            res = [asyncio.run(run_episode(t, env, make(t), ScriptedSubagent(t), cfg)) for t in tasks]
            out.append(
                {
                    "width": w,
                    "policy": name,
                    "critical_steps": sum(r.critical_steps for r in res) / len(res),
                    "total_steps": sum(r.total_steps for r in res) / len(res),
                    "score": sum(score_swarm(t, r.final_text) for t, r in zip(tasks, res, strict=True))
                    / len(res),
                    "budget": sum(t.data["budgets"]["critical_steps"] for t in tasks) / len(tasks),
                }
            )
    return out


# ------------------------------------------------------------------------ run
def run(out: Path, scale_name: str = "small", data_dir: Path | None = None, seed: int = 0) -> Path:
    if scale_name not in SCALES:
        raise KimiLabError(f"--scale {scale_name}: choose one of {', '.join(SCALES)}")
    scale = SCALES[scale_name]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    data = ensure_data(Path(data_dir or "data") / f"parl-{scale_name}", scale, seed)
    common = [f"model={scale.model}", f"seed={seed}", f"runs_dir={out}", "logger=csv", *scale.extra]
    sft = train_stage(
        out / "sft",
        [
            "experiment=parl_ablation/sft",
            f"trainer.max_steps={scale.sft_steps}",
            f"data.sources.sft.path={data['sft']}",
            *common,
        ],
        TAG,
    )
    ckpts = {"sft": sft}
    for arm, a in ARMS.items():
        ckpts[arm] = train_stage(
            out / arm,
            [
                "experiment=parl_ablation/parl",
                f"phase.init_from={sft}",
                f"trainer.max_steps={scale.parl_steps}",
                f"trainer.val_check_interval={scale.parl_steps}",
                f"phase.parl.tasks={data['tasks']}",
                f"phase.parl.lambda1={a['lambda1']}",
                f"phase.parl.lambda2={a['lambda2']}",
                f"phase.parl.anneal={str(a['anneal']).lower()}",
                f"phase.parl.samples_per_prompt={scale.samples_per_prompt}",
                f"phase.parl.prompts_per_step={scale.prompts_per_step}",
                f"phase.parl.max_new_tokens={scale.max_new_tokens}",
                f"phase.parl.eval_tasks={scale.eval_tasks}",
                *[o for o in common if not o.startswith("data.")],
            ],
            TAG,
        )
    evals: dict[str, Any] = {}
    for name, ckpt in ckpts.items():
        path = out / "eval" / f"{name}.json"
        if path.is_file():
            evals[name] = json.loads(path.read_text())
            continue
        print(f"[{TAG}] evaluating {name} on {scale.eval_tasks} held-out tasks", flush=True)
        evals[name] = evaluate_orchestrator(ckpt, data["tasks"], scale.eval_tasks, scale.max_new_tokens)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(evals[name], indent=2))
    sweep = width_sweep(scale.widths, seed)
    from kimi_lab.reports.parl_ablation import write

    report = write(
        out,
        evals,
        sweep,
        {"scale": asdict(scale), "seed": seed, "minutes": (time.time() - started) / 60, "arms": ARMS},
    )
    print(f"[{TAG}] report: {report}", flush=True)
    return report
