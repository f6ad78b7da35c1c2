"""``kimi-lab experiment zero_vision``: does text-only tool-use SFT transfer to images (K2.5 section 5)?

The chain, each stage an ordinary run folder under ``OUT`` (resumable: a finished
stage is kept, an interrupted one resumes from its last checkpoint):

1. ``pretrain``: joint text-vision pre-training (``experiment=zero_vision/pretrain``).
2. ``sft_text``: SFT on text-only tool-use trajectories (zero-vision SFT).
3. ``sft_visual``: the same SFT with a share of visual trajectories added.
4. evaluation of 1-3 on the visual tasks (an image in the prompt) and their text
   twins, greedy, one sample per prompt, the code tool in the sandbox; and of 2 on the
   visual tasks with every image blanked (the control of transfer).
5. ``rl``: joint text-vision RL from ``sft_text``, then the same evaluation.

``report.md`` / ``report.json`` / ``zero_vision.png`` compare the four models.
The K2.5 claims under test: text-only SFT teaches visual tool use (1 -> 2 on
visual tasks); visual traces do not help (2 vs 3); RL improves both modalities.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kimi_lab.errors import KimiLabError
from kimi_lab.experiments.stages import TINY_VL_OVERRIDES, Job, in_process_pool, run_jobs, train_stage
from kimi_lab.reports.zero_vision import BLANK, VARIANTS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scale:
    model: str
    pretrain_steps: int
    sft_steps: int
    rl_steps: int
    eval_prompts: int  # held-out prompts per task source (vision, text), the same for every model
    n_text: int  # documents / samples per pre-training source
    n_sft: int  # SFT trajectories
    n_tasks: int  # task prompts per modality
    # per assistant turn, in RL and evaluation: the reference programs take up to ~620 tokens
    # (image tasks; text ones up to ~440), the answer after the tool's output up to ~40
    max_new_tokens: int
    task_val_fraction: float = 0.25  # of n_tasks held out: at least eval_prompts of them are needed
    eval_batch: int = 64  # episodes decoded side by side in evaluation
    slots: int = 2  # stages side by side after pre-training (SFTs, RL, evaluations), one thread each
    extra: tuple[str, ...] = ()  # overrides for every training stage


SCALES = {
    # 200 held-out prompts per source (of about 300 held out): a reward difference of 0.1 is
    # beyond two standard errors even unpaired. Each SFT sees ~2,200 conversations (about two
    # passes over 1,200) in 280 steps of four 2,048-token windows (two conversations a window,
    # experiment=zero_vision/sft); the two SFTs run side by side, then RL beside the
    # evaluations. Minutes: see the README.
    "small": Scale(
        "small-vl",
        pretrain_steps=400,
        sft_steps=280,
        rl_steps=20,
        eval_prompts=200,
        n_text=1500,
        n_sft=1200,
        n_tasks=400,
        max_new_tokens=640,
        task_val_fraction=0.75,
        eval_batch=64,
    ),
    # Seconds per stage: checks the chain end to end (tests), measures nothing.
    "tiny": Scale(
        "tiny-vl",
        pretrain_steps=6,
        sft_steps=6,
        rl_steps=2,
        eval_prompts=2,
        n_text=60,
        n_sft=40,
        n_tasks=24,
        max_new_tokens=32,
        task_val_fraction=0.25,
        eval_batch=4,
        extra=TINY_VL_OVERRIDES,
    ),
}


def held_out(task_dir: Path) -> int | None:
    """Held-out (val) prompts a task folder holds, from its manifest."""
    try:
        return int(json.loads((task_dir / "manifest.json").read_text())["counts"]["val"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# ----------------------------------------------------------------------- data
def ensure_data(data_dir: Path, scale: Scale, seed: int = 0) -> dict[str, Path]:
    """Build every dataset the chain needs that is not there yet; returns their folders."""
    from data_pipelines.image_code import build_image_code
    from data_pipelines.interleaved import build_interleaved
    from data_pipelines.text import build_text
    from data_pipelines.video import build_video
    from data_pipelines.visual_tasks import build_visual_tasks
    from data_pipelines.zero_vision_sft import build_zero_vision_sft

    n = scale.n_text

    def tasks(out: Path, modality: str) -> Any:
        return build_visual_tasks(
            out,
            n=scale.n_tasks,
            seed=seed + 1,
            modality=modality,
            val_fraction=scale.task_val_fraction,
            progress=False,
        )

    paths = {
        "text": data_dir / "text",
        "image_code": data_dir / "image_code",
        "video": data_dir / "video",
        "interleaved": data_dir / "interleaved",
        "sft_text": data_dir / "zero-vision-sft",
        "sft_visual": data_dir / "zero-vision-sft-visual",
        "vision_tasks": data_dir / "visual-tasks",
        "text_tasks": data_dir / "text-tasks",
    }
    builders = {
        "text": lambda out: build_text(out, n=n, seed=seed, progress=False),
        "image_code": lambda out: build_image_code(out, n=max(24, n // 4), seed=seed, progress=False),
        "video": lambda out: build_video(str(out), n=max(24, n // 8), seed=seed, progress=False),
        "interleaved": lambda out: build_interleaved(str(out), n=max(24, n // 4), seed=seed, progress=False),
        "sft_text": lambda out: build_zero_vision_sft(out, n=scale.n_sft, seed=seed, progress=False),
        "sft_visual": lambda out: build_zero_vision_sft(
            out, n=scale.n_sft, seed=seed, with_visual_traces=True, progress=False
        ),
        # Held-out prompts (val) for evaluation, which never sees RL's training prompts.
        "vision_tasks": lambda out: tasks(out, "image"),
        "text_tasks": lambda out: tasks(out, "text"),
    }

    def build(name: str) -> None:
        path = paths[name]
        if (path / "manifest.json").is_file():
            return
        t0 = time.time()
        print(f"[zero_vision] building {name} -> {path}", flush=True)
        builders[name](path)
        print(f"[zero_vision] built {name} in {time.time() - t0:.0f}s", flush=True)

    # The pre-training sources first (one at a time: image_code drives a browser); then the
    # trajectories and tasks, whose time is the sandbox verifying each one: two builders at once
    # keep both cores busy.
    for name in ("text", "image_code", "video", "interleaved"):
        build(name)
    with ThreadPoolExecutor(max_workers=max(1, scale.slots)) as pool:
        list(pool.map(build, ("sft_text", "sft_visual", "vision_tasks", "text_tasks")))
    return paths


# --------------------------------------------------------------------- stages
def eval_path(out: Path, variant: str) -> Path:
    return out / "eval" / f"{variant}.json"


def eval_stage(
    out: Path, variant: str, ckpt: Path, tasks: dict[str, str], scale: Scale, blank_images: bool = False
) -> dict[str, Any]:
    """Greedy evaluation of one model on the first ``eval_prompts`` val prompts of each source
    (kept in ``eval/<variant>.json``; a rerun reuses it)."""
    from kimi_lab.rl.evaluate import evaluate_checkpoint

    path = eval_path(out, variant)
    if path.is_file():
        return json.loads(path.read_text())
    n = scale.eval_prompts
    print(f"[zero_vision] evaluating {variant} on {n} prompts per source", flush=True)
    t0 = time.time()

    def progress(done: int, total: int) -> None:
        print(f"[zero_vision] {variant}: {done}/{total} episodes, {time.time() - t0:.0f}s", flush=True)

    result = evaluate_checkpoint(
        str(ckpt),
        tasks,
        n,
        batch_size=scale.eval_batch,
        max_new_tokens=scale.max_new_tokens,
        max_turns=2,
        progress=progress,
        require_n=True,
        blank_images=blank_images,
    )
    result["seconds"] = time.time() - t0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    return result


def run(out: Path, scale_name: str = "small", data_dir: Path | None = None, seed: int = 0) -> Path:
    if scale_name not in SCALES:
        raise KimiLabError(f"--scale {scale_name}: choose one of {', '.join(SCALES)}")
    scale = SCALES[scale_name]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    stages: dict[str, list[float]] = {}  # stage -> [minutes from the start, its minutes]

    def timed(name: str, work: Callable[[], Any]) -> Callable[[], Any]:
        def run_timed() -> Any:
            t0 = time.time()
            result = work()
            stages[name] = [round((t0 - started) / 60, 2), round((time.time() - t0) / 60, 2)]
            return result

        return run_timed

    data = timed("data", lambda: ensure_data(Path(data_dir or "data"), scale, seed))()
    common = [
        f"model={scale.model}",  # also sets data.tokenizer's vocab size before init_from adopts the model
        f"seed={seed}",
        f"runs_dir={out}",
        "logger=csv",
        *scale.extra,
    ]
    # Pre-training runs alone, on every core; every later stage shares the cores one thread each.
    pre = timed(
        "pretrain",
        lambda: train_stage(
            out / "pretrain",
            [
                "experiment=zero_vision/pretrain",
                f"trainer.max_steps={scale.pretrain_steps}",
                f"data.sources.text.path={data['text']}",
                f"data.sources.image_code.path={data['image_code']}",
                f"data.sources.video.path={data['video']}",
                f"data.sources.interleaved.path={data['interleaved']}",
                *common,
            ],
        ),
    )()
    one_thread = [*common, "trainer.num_threads=1"] if scale.slots > 1 else common
    ckpts: dict[str, Path] = {"pretrain": pre}

    def sft(variant: str, data_cfg: str) -> Path:
        ckpts[variant] = train_stage(
            out / variant,
            [
                "experiment=zero_vision/sft",
                f"data={data_cfg}",
                f"phase.init_from={pre}",
                f"data.sources.sft.path={data[variant]}",
                *one_thread,
                f"trainer.max_steps={scale.sft_steps}",
            ],
        )
        return ckpts[variant]

    def rl() -> Path:
        ckpts["rl"] = train_stage(
            out / "rl",
            [
                "experiment=zero_vision/rl",
                f"phase.init_from={ckpts['sft_text']}",
                f"trainer.max_steps={scale.rl_steps}",
                f"phase.rl.tasks.vision.path={data['vision_tasks']}",
                f"phase.rl.tasks.text.path={data['text_tasks']}",
                f"phase.rl.max_new_tokens={scale.max_new_tokens}",
                *[o for o in one_thread if not o.startswith("data.")],
            ],
        )
        return ckpts["rl"]

    tasks = {"vision": str(data["vision_tasks"]), "text": str(data["text_tasks"])}
    threads = 1 if scale.slots > 1 else 0
    with in_process_pool(scale.slots, threads) as evaluator:  # spawned: no forked torch state

        def evaluate(variant: str, model: str, blank: bool = False) -> dict[str, Any]:
            only = {"vision": tasks["vision"]} if blank else tasks
            if eval_path(out, variant).is_file():  # kept from an earlier call: read here, no worker
                return eval_stage(out, variant, ckpts[model], only, scale, blank)
            return evaluator.submit(eval_stage, out, variant, ckpts[model], only, scale, blank).result()

        # The control of transfer (BLANK): the text-only SFT model on the same visual prompts with
        # nothing to see (every image its background colour). Beating it means its programs read
        # the pixels.
        jobs = [
            Job("sft_text", lambda: sft("sft_text", "zero_vision_sft")),
            Job("sft_visual", lambda: sft("sft_visual", "zero_vision_sft_visual")),
            Job("rl", rl, after=("sft_text",)),
            Job("eval_pretrain", lambda: evaluate("pretrain", "pretrain")),
            Job("eval_sft_text", lambda: evaluate("sft_text", "sft_text"), after=("sft_text",)),
            Job("eval_sft_visual", lambda: evaluate("sft_visual", "sft_visual"), after=("sft_visual",)),
            Job(f"eval_{BLANK}", lambda: evaluate(BLANK, "sft_text", blank=True), after=("sft_text",)),
            Job("eval_rl", lambda: evaluate("rl", "rl"), after=("rl",)),
        ]
        done = run_jobs([Job(j.name, timed(j.name, j.run), j.after) for j in jobs], scale.slots)
    results = {v: done[f"eval_{v}"] for v in (*VARIANTS, BLANK)}
    from kimi_lab.reports.zero_vision import write

    meta = {
        "scale": asdict(scale),
        "seed": seed,
        "minutes": (time.time() - started) / 60,
        "stages": stages,  # this call's stages only: a rerun that kept a stage times the reading
        "held_out": {name: held_out(Path(path)) for name, path in tasks.items()},
    }
    report = write(out, results, meta)
    print(f"[zero_vision] report: {report}", flush=True)
    return report
