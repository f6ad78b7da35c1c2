"""``kimi-lab experiment parl_ablation``: which parts of the PARL reward matter (K2.5 section 7)?

The chain, each training stage an ordinary run folder under ``OUT`` (resumable):

1. warm starts, by SFT on the scripted baselines' orchestrator episodes in the index
   action language (``data_pipelines.swarm_sft``; widths 2-12, every item number seen):
   - ``sft``: mostly fan-outs (a sub-agent per item, all in one stage), from scratch, with some
     serial and over-spawning episodes so that every action is known;
   - ``ws_serial``: ``sft`` tuned further on mostly serial episodes (``solve``: under-uses
     parallelism);
   - ``ws_spawn``: ``sft`` tuned further on fan-outs that also spawn idle sub-agents (over-spawns).
2. PARL arms (``ARMS``), same seed and tasks, scripted (frozen) sub-agents: from ``ws_serial``,
   r_perf only vs the full reward annealed to 0 (K2.5): does serial collapse show? From
   ``ws_spawn``, r_perf + r_parallel (held) vs the full reward: does spurious parallelism?
   Tasks are built with a budget slack that lets one agent finish the narrowest widths and
   not the others, so working alone is a real choice the reward can teach against.
3. greedy evaluation of every warm start and arm on held-out wide tasks (item-F1 within
   the critical-step budget); critical steps against width (4, 8, 12) for the trained
   orchestrator, the scripted fan-out and the scripted single agent; the trained
   orchestrator once more with a model (the ``sft`` checkpoint) as every sub-agent.

Generation budgets come from the demonstrations: the longest assistant turn the builder
measured at the widths in play, with a margin (``turn_budget``); no demonstrated turn is
longer, so a turn is cut only when a policy writes more than any demonstration did. Stages
that do not depend on each other run side by side, ``Scale.workers`` processes of
``Scale.threads`` torch threads each. ``report.md`` / ``report.json`` /
``parl_ablation.png`` (``kimi_lab.reports.parl_ablation``) judge each claim against its
standard error.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from kimi_lab.errors import DataError, KimiLabError
from kimi_lab.experiments.stages import Job, in_process_pool, run_jobs, train_stage

TAG = "parl_ablation"
ACTIONS = "index"  # the orchestrator's action language (kimi_lab.swarm.actions)


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
    # the warm start to solve tasks: mostly fan-outs, and every other action seen (a tuned warm
    # start then shifts a known mixture: new tokens learn too slowly in a short tune)
    "sft": WarmStart(None, 0.7, 0.15),
    "ws_serial": WarmStart("sft", 0.2, 0.0),
    "ws_spawn": WarmStart("sft", 0.2, 0.8),
}
ARMS = {
    "perf": Arm("ws_serial", 0.0, 0.0, False),  # serial collapse?
    "full": Arm("ws_serial", 0.5, 0.5, True),
    "spawn_parallel": Arm("ws_spawn", 0.5, 0.0, False),  # spurious parallelism?
    "spawn_full": Arm("ws_spawn", 0.5, 0.5, True),
}
TRAINED = "full"  # the arm whose orchestrator the width sweep and the model sub-agents play
# What each failure mode's verdict compares: (arm, the full-reward arm from the same warm start)
FAILURE_MODES = {
    "serial_collapse": ("perf", "full"),
    "spurious_parallelism": ("spawn_parallel", "spawn_full"),
}


@dataclass(frozen=True)
class Scale:
    model: str
    sft_steps: int
    tune_steps: int  # ws_serial / ws_spawn, from sft
    parl_steps: int
    n_tasks: int
    n_sft: int  # demonstrations for sft; each tuned warm start gets a quarter as many
    sft_widths: tuple[int, int]  # every item number a task may hold is seen
    task_widths: tuple[int, int]  # PARL's training and held-out tasks, and the tuned warm starts'
    slack: int  # budget slack of the tasks: one agent fits the narrowest widths only
    eval_tasks: int
    sweep_widths: tuple[int, ...]
    sweep_tasks: int  # per width
    model_subagent_tasks: int  # the extra evaluation with a model as every sub-agent
    samples_per_prompt: int
    prompts_per_step: int
    parl_lr: float
    tune_lr: float
    # torch threads per process: on a 2-core machine shared with other jobs two threads spin-wait
    # on each other (a training step measured 3x slower than with one); None: torch's choice
    threads: int | None = None
    workers: int = 1  # stages run side by side
    subagent_tokens: int = 64  # per turn of a model sub-agent (it was never taught the job: short)
    max_turn_tokens: int | None = None  # a cap on the demonstrations' turn budgets (tiny: CI time)
    arms: tuple[str, ...] = tuple(ARMS)
    extra: tuple[str, ...] = ()


SCALES = {
    # Measured on the shared 2-core machine of this round (one-thread processes, CPU seconds; a quiet
    # machine runs at about these): SFT 1.0 s a step, PARL 3-5 s a step of 16 episodes, an evaluation
    # of 60 held-out tasks 20-60 s.
    "small": Scale(
        model="mini",
        sft_steps=480,
        tune_steps=60,
        parl_steps=60,
        n_tasks=240,
        n_sft=2400,
        sft_widths=(2, 12),
        task_widths=(2, 8),
        slack=9,
        eval_tasks=60,
        sweep_widths=(4, 8, 12),
        sweep_tasks=4,
        model_subagent_tasks=4,
        samples_per_prompt=4,
        prompts_per_step=4,
        parl_lr=5e-5,
        tune_lr=5e-4,
        threads=1,
        workers=2,
        extra=("data.batch_size=2",),
    ),
    "tiny": Scale(
        model="tiny",
        sft_steps=4,
        tune_steps=1,
        parl_steps=1,
        n_tasks=24,
        n_sft=24,
        sft_widths=(2, 4),
        task_widths=(2, 3),
        slack=9,
        eval_tasks=2,
        sweep_widths=(2, 4),
        sweep_tasks=1,
        model_subagent_tasks=1,
        samples_per_prompt=2,
        prompts_per_step=1,
        parl_lr=1e-4,
        tune_lr=3e-4,
        workers=2,
        subagent_tokens=8,
        max_turn_tokens=32,  # an untrained model writes to the end of its budget
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
def ensure_data(data_dir: Path, scale: Scale, seed: int, tokenizer: Path, vocab_size: int) -> dict[str, Path]:
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
            slack=scale.slack,
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
            # the tuned warm starts at the tasks' widths: the behaviour PARL starts from
            width_range=scale.sft_widths if ws.parent is None else scale.task_widths,
            actions=ACTIONS,
            tokenizer=tokenizer,
            vocab_size=vocab_size,
        )
    return paths


def turn_budget(manifests: list[dict[str, Any]], widths: tuple[int, int], margin: float = 1.25) -> int:
    """Tokens per orchestrator turn: the longest demonstrated turn at ``widths``, with ``margin``, in
    multiples of 32 (the builder measured every turn; none is longer than this)."""
    lo, hi = widths
    longest = [t for m in manifests for w, t in m["turn_tokens"].items() if lo <= int(w) <= hi]
    if not longest:
        raise DataError(f"no demonstration of a width in {lo}-{hi}: no turn length to budget from")
    return 32 * math.ceil(max(longest) * margin / 32)


def _composed(scale: Scale) -> Any:
    from kimi_lab.config import compose, to_run_config

    return to_run_config(compose(["experiment=parl_ablation/sft", f"model={scale.model}", *scale.extra]))


def _manifest(path: Path) -> dict[str, Any]:
    return json.loads((path / "manifest.json").read_text())


# ------------------------------------------------------------------------ run
def _evaluate(out: Path, name: str, pool: Any, fn: Any, *args: Any, **kw: Any) -> Any:
    """``fn(*args, **kw)`` in ``pool``, cached as ``out/eval/<name>.json`` (a rerun keeps finished
    evaluations)."""
    path = out / "eval" / f"{name}.json"
    if path.is_file():
        return json.loads(path.read_text())
    print(f"[{TAG}] evaluating {name}", flush=True)
    t0 = time.time()
    result = pool.submit(fn, *args, **kw).result()
    if isinstance(result, dict):
        result["seconds"] = time.time() - t0
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, path)
    print(f"[{TAG}] {name}: evaluated in {time.time() - t0:.0f}s", flush=True)
    return result


def run(out: Path, scale_name: str = "small", data_dir: Path | None = None, seed: int = 0) -> Path:
    from kimi_lab.config.swarm import SwarmConfig
    from kimi_lab.metrics import CHECKPOINT_DIR, LAST_CHECKPOINT, SWARM_DIR
    from kimi_lab.swarm.evaluate import evaluate, width_sweep

    if scale_name not in SCALES:
        raise KimiLabError(f"--scale {scale_name}: choose one of {', '.join(SCALES)}")
    scale = SCALES[scale_name]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    cfg = _composed(scale)  # the tokenizer training uses: demonstrations are measured in it
    tokenizer = Path(cfg.data.tokenizer)
    data = ensure_data(
        Path(data_dir or "data") / f"parl-{scale_name}", scale, seed, tokenizer, cfg.model.vocab_size
    )
    demos = {name: _manifest(data[name]) for name in WARM_STARTS}
    parl_tokens = turn_budget(list(demos.values()), scale.task_widths)
    sweep_tokens = turn_budget([demos["sft"]], (min(scale.sweep_widths), max(scale.sweep_widths)))
    if scale.max_turn_tokens is not None:
        parl_tokens, sweep_tokens = (min(t, scale.max_turn_tokens) for t in (parl_tokens, sweep_tokens))
    common = [
        f"model={scale.model}",
        f"seed={seed}",
        f"runs_dir={out}",
        "logger=csv",
        *scale.extra,
    ]
    if scale.threads:
        common.append(f"trainer.num_threads={scale.threads}")
    runs = {name: out / name / CHECKPOINT_DIR / LAST_CHECKPOINT for name in (*WARM_STARTS, *scale.arms)}

    def warm_start(name: str) -> Path:
        ws = WARM_STARTS[name]
        tune = []
        if ws.parent is not None:  # a short run: a short warmup, the schedule's decay still fits
            tune = [
                f"phase.init_from={runs[ws.parent]}",
                f"phase.optim.lr={scale.tune_lr}",
                "phase.schedule.warmup_steps=3",
            ]
        steps = scale.sft_steps if ws.parent is None else scale.tune_steps
        overrides = [
            "experiment=parl_ablation/sft",
            f"trainer.max_steps={steps}",
            f"data.sources.sft.path={data[name]}",
            *tune,
            *common,
        ]
        return train_stage(out / name, overrides, TAG)

    def arm(name: str) -> Path:
        a = ARMS[name]
        overrides = [
            "experiment=parl_ablation/parl",
            f"phase.init_from={runs[a.start]}",
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
            f"phase.parl.max_new_tokens={parl_tokens}",
            f"phase.parl.swarm.actions={ACTIONS}",
            f"phase.parl.eval_tasks={scale.eval_tasks}",
            *[o for o in common if not o.startswith(("data.batch_size", "trainer.limit_val_batches"))],
        ]
        return train_stage(out / name, overrides, TAG)

    # the swarm limits phase parl trains under (conf/experiment/parl_ablation/parl.yaml)
    eval_cfg = SwarmConfig(
        actions=ACTIONS,
        max_orchestrator_steps=8,
        max_subagent_steps=8,
        step_timeout_s=1800.0,
        subagent_timeout_s=1800.0,
    )
    trained = TRAINED if TRAINED in scale.arms else scale.arms[-1]
    with in_process_pool(scale.workers, scale.threads) as pool:
        jobs: dict[str, tuple[Any, tuple[str, ...]]] = {}  # name -> (what, after which)
        for name, ws in WARM_STARTS.items():
            jobs[f"fit:{name}"] = (partial(warm_start, name), (f"fit:{ws.parent}",) if ws.parent else ())
        for name in scale.arms:
            jobs[f"fit:{name}"] = (partial(arm, name), (f"fit:{ARMS[name].start}",))
        for name in runs:  # held-out episodes, the first few traced into the run's swarm/ folder
            jobs[f"eval:{name}"] = (
                partial(
                    _evaluate, out, name, pool, evaluate, runs[name], data["tasks"], scale.eval_tasks,
                    eval_cfg, parl_tokens, trace_dir=out / name / SWARM_DIR,
                ),
                (f"fit:{name}",),
            )  # fmt: skip
        jobs["eval:width_sweep"] = (
            partial(
                _evaluate, out, "width_sweep", pool, width_sweep, runs[trained], data["tasks"],
                scale.sweep_widths, scale.sweep_tasks, seed, ACTIONS, sweep_tokens, scale.slack,
            ),
            (f"fit:{trained}",),
        )  # fmt: skip
        jobs["eval:model_subagents"] = (
            partial(
                _evaluate, out, "model_subagents", pool, evaluate, runs[trained], data["tasks"],
                scale.model_subagent_tasks, eval_cfg, parl_tokens, subagent=f"ckpt:{runs['sft']}",
                subagent_tokens=scale.subagent_tokens,
            ),
            (f"fit:{trained}", "fit:sft"),
        )  # fmt: skip
        done = run_jobs([Job(n, fn, after) for n, (fn, after) in jobs.items()], scale.workers)
    evals = {name: done[f"eval:{name}"] for name in runs}
    from kimi_lab.reports.parl_ablation import write

    meta = {
        "scale": asdict(scale),
        "seed": seed,
        "actions": ACTIONS,
        "minutes": (time.time() - started) / 60,
        "load_average": os.getloadavg()[0],  # the machine is often shared: times mean little without it
        "cpus": os.cpu_count(),
        "turn_tokens": {"parl": parl_tokens, "sweep": sweep_tokens},
        "demonstrations": {
            k: {"counts": v["counts"], "turn_tokens": v["turn_tokens"]} for k, v in demos.items()
        },
        "warm_starts": {k: asdict(v) for k, v in WARM_STARTS.items()},
        "arms": {k: asdict(ARMS[k]) for k in scale.arms},
        "failure_modes": {k: v for k, v in FAILURE_MODES.items() if set(v) <= set(scale.arms)},
        "trained": trained,
        "model_subagent": "sft",
    }
    report = write(out, evals, done["eval:width_sweep"], done["eval:model_subagents"], meta)
    print(f"[{TAG}] report: {report}", flush=True)
    return report
