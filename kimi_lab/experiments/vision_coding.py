"""``kimi-lab experiment vision_coding``: do image-code pairs in pre-training teach coding from pixels (K2.5)?

The chain, each training stage an ordinary run folder under ``OUT`` (resumable: a finished
stage is kept, an interrupted one resumes from its last checkpoint):

1. ``pretrain_code``: joint pre-training of ``small-vl`` on text, image-code pairs (SVG and
   HTML next to their renders) and recording-code pairs (pages in motion next to their code).
2. ``pretrain_caption``: the control, the same run with the same pictures and clips paired
   with captions instead of code (the same steps, batch and vision share: the same tokens).
3. ``sft_code`` / ``sft_caption``: the same short SFT on code from pixels for both.
4. greedy evaluation of both on the same held-out screenshots (screenshot -> HTML / SVG) and
   recordings (recording -> HTML): the rendering reward per prompt, whether the answer
   rendered at all, and a few rendered answers kept beside their targets.

``report.md`` / ``report.json`` / ``vision_coding.png`` (``kimi_lab.reports.vision_coding``)
compare the two prompt by prompt and judge K2.5's claim beyond two standard errors.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kimi_lab.errors import KimiLabError
from kimi_lab.experiments.stages import TINY_VL_OVERRIDES, train_stage

TAG = "vision_coding"
ARMS = ("code", "caption")  # what the pictures and clips were paired with in pre-training
SOURCES = {"screenshot": ("html_screenshot", "svg_screenshot"), "recording": ("html_recording",)}


@dataclass(frozen=True)
class Scale:
    model: str
    pretrain_steps: int
    sft_steps: int
    eval_prompts: int  # held-out prompts per source (screenshot, recording), the same for both arms
    n_text: int
    n_image_code: int
    n_recordings: int
    n_sft: int  # SFT conversations (all three families)
    n_eval: int  # tasks built per source, of which ``eval_val_fraction`` are held out
    max_new_tokens: int  # an answer's budget (a page is 250-500 tokens, an SVG up to ~800)
    eval_batch: int = 32
    eval_val_fraction: float = 0.9
    examples: int = 2  # rendered answers per source kept for the report's picture
    extra: tuple[str, ...] = ()  # overrides for every training stage


SCALES = {
    # 200 held-out prompts per source: a reward difference of 0.1 is beyond two standard errors
    # even unpaired. Stage times on 2 cores: see the README.
    "small": Scale("small-vl", 500, 300, 200, 1500, 800, 500, 900, 250, 768),
    # Seconds per stage: checks the chain end to end (tests), measures nothing.
    "tiny": Scale(
        "tiny-vl",
        2,
        2,
        2,
        40,
        6,
        6,
        6,
        4,
        16,
        eval_batch=4,
        eval_val_fraction=1.0,
        examples=1,
        extra=TINY_VL_OVERRIDES,
    ),
}


# ----------------------------------------------------------------------- data
def ensure_data(data_dir: Path, scale: Scale, seed: int = 0) -> dict[str, Path]:
    """Build every dataset the chain needs that is not there yet; returns their folders."""
    from data_pipelines.captions import build_captions
    from data_pipelines.code_tasks import build_code_tasks
    from data_pipelines.image_code import build_image_code
    from data_pipelines.page_recordings import build_page_recordings
    from data_pipelines.text import build_text

    paths = {
        "text": data_dir / "text",
        "image_code": data_dir / "image_code",
        "image_code_caption": data_dir / "image_code_caption",
        "recordings": data_dir / "page_recordings",
        "recordings_caption": data_dir / "page_recordings_caption",
        "sft": data_dir / "code_from_pixels_sft",
        **{f"eval_{s}": data_dir / f"code_from_pixels_{s}" for s in SOURCES},
    }
    builders = {
        "text": lambda out: build_text(out, n=scale.n_text, seed=seed, progress=False),
        "image_code": lambda out: build_image_code(out, n=scale.n_image_code, seed=seed, progress=False),
        # The very pictures and clips of the code sets, each with its caption instead of its code.
        "image_code_caption": lambda out: build_captions(out, paths["image_code"], progress=False),
        "recordings": lambda out: build_page_recordings(
            str(out), n=scale.n_recordings, seed=seed, progress=False
        ),
        "recordings_caption": lambda out: build_captions(out, paths["recordings"], progress=False),
        "sft": lambda out: build_code_tasks(out, n=scale.n_sft, seed=seed, with_answers=True, progress=False),
        # Held-out prompts from another seed's task stream: never an SFT page.
        **{
            f"eval_{s}": (
                lambda out, fams=fams: build_code_tasks(
                    out,
                    n=scale.n_eval,
                    seed=seed + 1,
                    families=fams,
                    val_fraction=scale.eval_val_fraction,
                    progress=False,
                )
            )
            for s, fams in SOURCES.items()
        },
    }
    for name, path in paths.items():
        if (path / "manifest.json").is_file():
            continue
        t0 = time.time()
        print(f"[{TAG}] building {name} -> {path}", flush=True)
        builders[name](path)
        print(f"[{TAG}] built {name} in {time.time() - t0:.0f}s", flush=True)
    return paths


# ----------------------------------------------------------------------- eval
def eval_stage(out: Path, arm: str, ckpt: Path, tasks: dict[str, str], scale: Scale) -> dict[str, Any]:
    """Greedy answers of one model to the first ``eval_prompts`` held-out prompts of each source, each
    rendered and scored (kept in ``eval/<arm>.json``, rendered examples in ``eval/<arm>/``)."""
    from kimi_lab.data.task_prompts import EvalTasks, TaskInput, task_urls
    from kimi_lab.rl.evaluate import episode_record, evaluate, load_policy
    from kimi_lab.rl.rollout import Episode
    from kimi_lab.tasks.code_rewards import code_score, shared_renderer

    path = out / "eval" / f"{arm}.json"
    if path.is_file():
        return json.loads(path.read_text())
    n = scale.eval_prompts
    prompts: list[TaskInput] = []
    for name, folder in tasks.items():
        got = list(EvalTasks(name, task_urls(name, folder, "val"), n))
        if len(got) < n:
            raise KimiLabError(
                f"{folder}: {len(got)} held-out prompts, {n} needed; remove it so it is rebuilt"
            )
        prompts += got
    keep = {
        str(t.task["id"])
        for name in tasks
        for t in [p for p in prompts if p.source == name][: scale.examples]
    }
    print(f"[{TAG}] evaluating {arm} on {n} prompts per source", flush=True)
    t0 = time.time()
    _, model, runner = load_policy(str(ckpt), scale.max_new_tokens, max_turns=1)
    details: dict[str, dict[str, Any]] = {}
    shown = out / "eval" / arm
    shown.mkdir(parents=True, exist_ok=True)

    def scorer(ep: Episode) -> float:
        task = ep.task
        targets = task.targets or [a for a in task.images.values() if a.ndim == 3]
        got = code_score(ep.final_text, targets, task.task["answer"], shared_renderer())
        tid = str(task.task["id"])
        details[tid] = {"rendered": got.rendered, "visual": got.visual, "structure": got.structure}
        if tid in keep and got.capture is not None:
            for i, png in enumerate(got.capture.frames):
                (shown / f"{tid}_{i}.png").write_bytes(png)
        return got.reward

    def progress(done: int, total: int) -> None:
        print(f"[{TAG}] {arm}: {done}/{total} answers, {time.time() - t0:.0f}s", flush=True)

    summary, episodes, rewards = evaluate(model, runner, prompts, scale.eval_batch, progress, scorer)
    records = []
    for ep, r in zip(episodes, rewards, strict=True):
        record = {**episode_record(ep, r), **details[str(ep.task.task["id"])]}
        if record["id"] in keep:
            record["answer"] = ep.final_text[:4000]
        records.append(record)
    result = {
        "checkpoint": str(ckpt),
        "summary": summary,
        "episodes": records,
        "seconds": time.time() - t0,
    }
    path.write_text(json.dumps(result, indent=2))
    return result


def save_targets(out: Path, tasks: dict[str, str], scale: Scale) -> None:
    """The example prompts' target frames, for the report's picture (``eval/targets/``)."""
    from PIL import Image

    from kimi_lab.data.task_prompts import EvalTasks, task_urls

    folder = out / "eval" / "targets"
    folder.mkdir(parents=True, exist_ok=True)
    for name, path in tasks.items():
        for task in EvalTasks(name, task_urls(name, path, "val"), scale.examples):
            frames = task.targets or [a for a in task.images.values() if a.ndim == 3]
            for i, rgb in enumerate(frames):
                Image.fromarray(rgb).save(folder / f"{task.task['id']}_{i}.png")


def run(out: Path, scale_name: str = "small", data_dir: Path | None = None, seed: int = 0) -> Path:
    from kimi_lab.tools.render_worker import render_unavailable_reason

    if scale_name not in SCALES:
        raise KimiLabError(f"--scale {scale_name}: choose one of {', '.join(SCALES)}")
    if reason := render_unavailable_reason():  # the rewards render in it: fail before hours of training
        raise KimiLabError(reason)
    scale = SCALES[scale_name]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    data = ensure_data(Path(data_dir or "data") / f"{TAG}-{scale_name}", scale, seed)
    common = [f"model={scale.model}", f"seed={seed}", f"runs_dir={out}", "logger=csv", *scale.extra]
    ckpts = {}
    for arm in ARMS:
        suffix = "" if arm == "code" else "_caption"
        pre = train_stage(
            out / f"pretrain_{arm}",
            [
                "experiment=vision_coding/pretrain",
                f"trainer.max_steps={scale.pretrain_steps}",
                f"data.sources.text.path={data['text']}",
                f"data.sources.image_code.path={data['image_code' + suffix]}",
                f"data.sources.recordings.path={data['recordings' + suffix]}",
                *common,
            ],
        )
        ckpts[arm] = train_stage(
            out / f"sft_{arm}",
            [
                "experiment=vision_coding/sft",
                f"phase.init_from={pre}",
                f"trainer.max_steps={scale.sft_steps}",
                f"data.sources.sft.path={data['sft']}",
                *common,
            ],
        )
    tasks = {s: str(data[f"eval_{s}"]) for s in SOURCES}
    save_targets(out, tasks, scale)
    results = {arm: eval_stage(out, arm, ckpts[arm], tasks, scale) for arm in ARMS}
    from kimi_lab.reports.vision_coding import write

    meta = {"scale": asdict(scale), "seed": seed, "minutes": (time.time() - started) / 60}
    report = write(out, results, meta)
    print(f"[{TAG}] report: {report}", flush=True)
    return report
