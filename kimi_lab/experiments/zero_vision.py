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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kimi_lab.errors import KimiLabError
from kimi_lab.experiments.stages import TINY_VL_OVERRIDES, train_stage
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
    max_new_tokens: int  # per assistant turn, in RL and evaluation (a program is ~300-500 tokens)
    task_val_fraction: float = 0.25  # of n_tasks held out: at least eval_prompts of them are needed
    eval_batch: int = 64  # episodes decoded side by side in evaluation
    extra: tuple[str, ...] = ()  # overrides for every training stage


SCALES = {
    # 200 held-out prompts per source (of about 300 held out): a reward difference of 0.1 is
    # beyond two standard errors even unpaired. Minutes on 2 CPU cores: see the README.
    "small": Scale("small-vl", 400, 500, 20, 200, 1500, 1200, 400, 768, 0.75, 64),
    # Seconds per stage: checks the chain end to end (tests), measures nothing.
    "tiny": Scale(
        "tiny-vl",
        6,
        6,
        2,
        2,
        60,
        40,
        24,
        32,
        0.25,
        4,
        TINY_VL_OVERRIDES,
    ),
}


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
        "vision_tasks": lambda out: build_visual_tasks(
            out, n=scale.n_tasks, seed=seed + 1, modality="image", val_fraction=scale.task_val_fraction
        ),
        "text_tasks": lambda out: build_visual_tasks(
            out, n=scale.n_tasks, seed=seed + 1, modality="text", val_fraction=scale.task_val_fraction
        ),
    }
    for name, path in paths.items():
        if (path / "manifest.json").is_file():
            continue
        t0 = time.time()
        print(f"[zero_vision] building {name} -> {path}", flush=True)
        builders[name](path)
        print(f"[zero_vision] built {name} in {time.time() - t0:.0f}s", flush=True)
    return paths


# --------------------------------------------------------------------- stages
def eval_stage(
    out: Path, variant: str, ckpt: Path, tasks: dict[str, str], scale: Scale, blank_images: bool = False
) -> dict[str, Any]:
    """Greedy evaluation of one model on the first ``eval_prompts`` val prompts of each source
    (kept in ``eval/<variant>.json``; a rerun reuses it)."""
    from kimi_lab.rl.evaluate import evaluate_checkpoint

    path = out / "eval" / f"{variant}.json"
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
    data = ensure_data(Path(data_dir or "data"), scale, seed)
    common = [
        f"model={scale.model}",  # also sets data.tokenizer's vocab size before init_from adopts the model
        f"seed={seed}",
        f"runs_dir={out}",
        "logger=csv",
        *scale.extra,
    ]
    pre = train_stage(
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
    )
    ckpts = {"pretrain": pre}
    for variant, data_cfg in (("sft_text", "zero_vision_sft"), ("sft_visual", "zero_vision_sft_visual")):
        ckpts[variant] = train_stage(
            out / variant,
            [
                "experiment=zero_vision/sft",
                f"data={data_cfg}",
                f"phase.init_from={pre}",
                f"trainer.max_steps={scale.sft_steps}",
                f"data.sources.sft.path={data[variant]}",
                *common,
            ],
        )
    ckpts["rl"] = train_stage(
        out / "rl",
        [
            "experiment=zero_vision/rl",
            f"phase.init_from={ckpts['sft_text']}",
            f"trainer.max_steps={scale.rl_steps}",
            f"phase.rl.tasks.vision.path={data['vision_tasks']}",
            f"phase.rl.tasks.text.path={data['text_tasks']}",
            f"phase.rl.max_new_tokens={scale.max_new_tokens}",
            *[o for o in common if not o.startswith("data.")],
        ],
    )
    tasks = {"vision": str(data["vision_tasks"]), "text": str(data["text_tasks"])}
    results = {v: eval_stage(out, v, ckpts[v], tasks, scale) for v in VARIANTS}
    # The control of transfer: the text-only SFT model on the same visual prompts with nothing to
    # see (every image its background colour). Beating it means its programs read the pixels.
    results[BLANK] = eval_stage(
        out, BLANK, ckpts["sft_text"], {"vision": tasks["vision"]}, scale, blank_images=True
    )
    from kimi_lab.reports.zero_vision import write

    report = write(
        out, results, {"scale": asdict(scale), "seed": seed, "minutes": (time.time() - started) / 60}
    )
    print(f"[zero_vision] report: {report}", flush=True)
    return report
