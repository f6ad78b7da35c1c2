"""``kimi-lab experiment parl_ablation``: which parts of the PARL reward matter (K2.5 section 7)?

The chain, each training stage an ordinary run folder under ``OUT`` (resumable):

1. warm starts, by SFT on the scripted baselines' orchestrator episodes
   (``data_pipelines.swarm_sft``, names from a corpus of their own, so only copying
   from the context imitates them):
   - ``sft``: fan-outs only (a sub-agent per item, all in one stage), from scratch;
   - ``ws_serial``: ``sft`` tuned further on mostly serial episodes (under-uses parallelism);
   - ``ws_spawn``: ``sft`` tuned further on fan-outs that also spawn idle sub-agents (over-spawns).
2. PARL arms (``ARMS``), same seed and tasks, scripted (frozen) sub-agents: r_perf only,
   r_perf + r_parallel (held), the full reward annealed to 0 (K2.5), from ``ws_serial``;
   r_perf only and the full reward from ``ws_spawn``.
3. greedy evaluation of every warm start and arm on held-out wide tasks (item-F1 within
   the critical-step budget); critical steps against width (4-12) for the trained
   orchestrator, the scripted fan-out and the scripted single agent; the trained
   orchestrator once more with a model (the ``sft`` checkpoint) as every sub-agent.

``report.md`` / ``report.json`` / ``parl_ablation.png`` (``kimi_lab.reports.parl_ablation``)
judge each claim against its standard error.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kimi_lab.errors import KimiLabError
from kimi_lab.experiments.stages import train_stage

TAG = "parl_ablation"


@dataclass(frozen=True)
class WarmStart:
    parent: str | None  # tuned further from this warm start (None: from scratch)
    fanout: float  # shares of the demonstration styles; the rest is serial
    overspawn: float


@dataclass(frozen=True)
class Arm:
    start: str  # the warm start it trains from
    lambda1: float  # r_parallel
    lambda2: float  # r_finish
    anneal: bool  # lambdas annealed to 0 (K2.5) or held


WARM_STARTS = {
    "sft": WarmStart(None, 1.0, 0.0),  # the warm start to solve tasks: every step spent on fan-outs
    "ws_serial": WarmStart("sft", 0.2, 0.0),
    "ws_spawn": WarmStart("sft", 0.2, 0.8),
}
ARMS = {
    "perf": Arm("ws_serial", 0.0, 0.0, False),
    "perf_parallel": Arm("ws_serial", 0.5, 0.0, False),
    "full": Arm("ws_serial", 0.5, 0.5, True),
    "spawn_perf": Arm("ws_spawn", 0.0, 0.0, False),
    "spawn_full": Arm("ws_spawn", 0.5, 0.5, True),
}
TRAINED = "full"  # the arm whose orchestrator the width sweep and the model sub-agents play


@dataclass(frozen=True)
class Scale:
    model: str
    sft_steps: int
    tune_steps: int  # ws_serial / ws_spawn, from sft
    parl_steps: int
    n_tasks: int
    n_sft: int  # demonstrations for sft; each tuned warm start gets a third as many
    sft_widths: tuple[int, int]
    task_widths: tuple[int, int]  # PARL's training and held-out tasks
    eval_tasks: int
    sweep_widths: tuple[int, ...]
    sweep_tasks: int  # per width
    model_subagent_tasks: int  # the extra evaluation with a model as every sub-agent
    samples_per_prompt: int
    prompts_per_step: int
    max_new_tokens: int  # per orchestrator turn in PARL and at the training widths
    sweep_max_new_tokens: int  # a wide turn at the sweep's widest task
    parl_lr: float
    # torch threads per process: on a 2-core machine shared with other jobs two threads spin-wait
    # on each other (a training step measured 3x slower than with one); None: torch's choice
    threads: int | None = None
    arms: tuple[str, ...] = tuple(ARMS)
    extra: tuple[str, ...] = ()


SCALES = {
    "small": Scale(
        model="small",
        sft_steps=240,
        tune_steps=20,
        parl_steps=12,
        n_tasks=240,
        n_sft=2400,
        sft_widths=(2, 6),
        task_widths=(2, 6),
        eval_tasks=24,
        sweep_widths=(4, 8, 12),
        sweep_tasks=4,
        model_subagent_tasks=4,
        samples_per_prompt=4,
        prompts_per_step=1,
        max_new_tokens=384,
        sweep_max_new_tokens=640,
        parl_lr=1e-4,
        threads=1,
        extra=("data.batch_size=2",),
    ),
    "tiny": Scale(
        model="tiny",
        sft_steps=4,
        tune_steps=1,
        parl_steps=1,
        n_tasks=24,
        n_sft=24,
        sft_widths=(2, 3),
        task_widths=(2, 3),
        eval_tasks=2,
        sweep_widths=(2, 4),
        sweep_tasks=1,
        model_subagent_tasks=1,
        samples_per_prompt=2,
        prompts_per_step=1,
        max_new_tokens=16,
        sweep_max_new_tokens=16,
        parl_lr=1e-4,
        arms=("perf", "spawn_full"),  # one arm from each tuned warm start: the chain, in CI time
        extra=(
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
    """Held-out-capable wide tasks, and one demonstration set per warm start (built once, kept)."""
    from data_pipelines.swarm_sft import build_swarm_sft
    from data_pipelines.swarm_tasks import build_swarm_tasks

    paths = {"tasks": data_dir / "swarm-tasks"}
    if not (paths["tasks"] / "manifest.json").is_file():
        print(f"[{TAG}] building swarm tasks -> {paths['tasks']}", flush=True)
        build_swarm_tasks(
            paths["tasks"],
            n=scale.n_tasks,
            seed=seed,
            val_fraction=0.25,
            kinds=("wide",),
            width_range=scale.task_widths,
            n_companies=96,
        )
    for name, ws in WARM_STARTS.items():
        paths[name] = data_dir / f"demos-{name}"
        if (paths[name] / "manifest.json").is_file():
            continue
        n = scale.n_sft if ws.parent is None else max(8, scale.n_sft // 4)
        print(f"[{TAG}] building {n} orchestrator demonstrations for {name} -> {paths[name]}", flush=True)
        build_swarm_sft(
            paths[name],
            n=n,
            seed=seed + 17 * (1 + list(WARM_STARTS).index(name)),
            fanout_fraction=ws.fanout,
            overspawn_fraction=ws.overspawn,
            kinds=("wide",),
            # tuned warm starts at the tasks' widths (a serial episode of 7+ items outgrows a window)
            width_range=scale.sft_widths if ws.parent is None else scale.task_widths,
        )
    return paths


# ------------------------------------------------------------------------ run
def _evaluate(out: Path, name: str, fn: Any, *args: Any, **kw: Any) -> Any:
    """``fn(*args, **kw)``, cached as ``out/eval/<name>.json`` (a rerun keeps finished evaluations)."""
    path = out / "eval" / f"{name}.json"
    if path.is_file():
        return json.loads(path.read_text())
    print(f"[{TAG}] evaluating {name}", flush=True)
    t0 = time.time()
    result = fn(*args, **kw)
    if isinstance(result, dict):
        result["seconds"] = time.time() - t0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    return result


def run(out: Path, scale_name: str = "small", data_dir: Path | None = None, seed: int = 0) -> Path:
    from kimi_lab.experiments.parl_eval import evaluate, width_sweep

    if scale_name not in SCALES:
        raise KimiLabError(f"--scale {scale_name}: choose one of {', '.join(SCALES)}")
    scale = SCALES[scale_name]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    data = ensure_data(Path(data_dir or "data") / f"parl-{scale_name}", scale, seed)
    common = [f"model={scale.model}", f"seed={seed}", f"runs_dir={out}", "logger=csv", *scale.extra]
    if scale.threads:
        import torch

        torch.set_num_threads(scale.threads)  # this process's evaluations
        common.append(f"trainer.num_threads={scale.threads}")
    ckpts: dict[str, Path] = {}
    for name, ws in WARM_STARTS.items():
        steps = scale.sft_steps if ws.parent is None else scale.tune_steps
        tune = []
        if ws.parent is not None:  # a short run: a short warmup, the schedule's decay still fits
            tune = [
                f"phase.init_from={ckpts[ws.parent]}",
                "phase.optim.lr=3e-4",
                "phase.schedule.warmup_steps=2",
            ]
        ckpts[name] = train_stage(
            out / name,
            [
                "experiment=parl_ablation/sft",
                f"trainer.max_steps={steps}",
                f"data.sources.sft.path={data[name]}",
                *tune,
                *common,
            ],
            TAG,
        )
    for arm in scale.arms:
        a = ARMS[arm]
        ckpts[arm] = train_stage(
            out / arm,
            [
                "experiment=parl_ablation/parl",
                f"phase.init_from={ckpts[a.start]}",
                f"trainer.max_steps={scale.parl_steps}",
                f"trainer.val_check_interval={scale.parl_steps}",
                "trainer.limit_val_batches=0",  # held-out evaluation is the experiment's own, below
                f"phase.optim.lr={scale.parl_lr}",
                f"phase.parl.tasks={data['tasks']}",
                f"phase.parl.lambda1={a.lambda1}",
                f"phase.parl.lambda2={a.lambda2}",
                f"phase.parl.anneal={str(a.anneal).lower()}",
                f"phase.parl.samples_per_prompt={scale.samples_per_prompt}",
                f"phase.parl.prompts_per_step={scale.prompts_per_step}",
                f"phase.parl.max_new_tokens={scale.max_new_tokens}",
                f"phase.parl.eval_tasks={scale.eval_tasks}",
                *[o for o in common if not o.startswith(("data.", "trainer.limit_val_batches"))],
            ],
            TAG,
        )
    evals = {
        name: _evaluate(out, name, evaluate, ckpt, data["tasks"], scale.eval_tasks, scale.max_new_tokens)
        for name, ckpt in ckpts.items()
    }
    trained = TRAINED if TRAINED in scale.arms else scale.arms[-1]
    sweep = _evaluate(
        out,
        "width_sweep",
        width_sweep,
        ckpts[trained],
        data["tasks"],
        scale.sweep_widths,
        scale.sweep_tasks,
        seed,
        scale.sweep_max_new_tokens,
    )
    model_sub = _evaluate(
        out,
        "model_subagents",
        evaluate,
        ckpts[trained],
        data["tasks"],
        scale.model_subagent_tasks,
        scale.max_new_tokens,
        subagent=f"ckpt:{ckpts['sft']}",
    )
    from kimi_lab.reports.parl_ablation import write

    meta = {
        "scale": asdict(scale),
        "seed": seed,
        "minutes": (time.time() - started) / 60,
        "load_average": os.getloadavg()[0],  # the machine is often shared: times mean little without it
        "cpus": os.cpu_count(),
        "warm_starts": {k: asdict(v) for k, v in WARM_STARTS.items()},
        "arms": {k: asdict(ARMS[k]) for k in scale.arms},
        "trained": trained,
        "model_subagent": "sft",
    }
    report = write(out, evals, sweep, model_sub, meta)
    print(f"[{TAG}] report: {report}", flush=True)
    return report
