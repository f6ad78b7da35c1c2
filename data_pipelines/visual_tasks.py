"""``kimi-lab data build visual-tasks``: verified prompts for evaluation and joint RL.

Each sample is one task as a chat record (``modality: "chat"``): ``messages`` is
the prompt (system + user, the user naming its images), ``task`` holds the id,
family, answer, answer type and reference program, ``files`` the text files the
tool's cwd gets; images ride beside the record as ``image_0.png``, ... Every
task's reference program runs in the sandbox first and only the ones that print
the ground truth are kept (``verified`` / ``failed`` in the manifest).
``--modality text|both`` adds the zero-vision text twins so RL can mix text and
vision tasks (OCR has no text twin).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from data_pipelines.common import ShardSink
from kimi_lab.data.schema import sample_key
from kimi_lab.errors import DataError
from kimi_lab.tasks.base import Task, task_seed
from kimi_lab.tasks.solve import check_sandbox, failure, run_reference, verified_answer
from kimi_lab.tasks.text_twins import FAMILIES as TEXT_FAMILIES
from kimi_lab.tasks.text_twins import text_task
from kimi_lab.tasks.visual import FAMILIES as IMAGE_FAMILIES
from kimi_lab.tasks.visual import image_task

BUILDER_VERSION = "visual-tasks/1"
MODALITIES = ("image", "text", "both")
log = logging.getLogger(__name__)


def task_sample(task: Task, record: dict[str, Any]) -> dict[str, Any]:
    """A WebDataset sample: the record as ``json``, the images as ``image_N.png``."""
    content = json.dumps(record, sort_keys=True).encode()
    return {
        "__key__": sample_key(f"{task.family}-{task.modality}", content),
        "json": content,
        **task.image_pngs(),
    }


def check_families(families: Sequence[str] | None, modality: str) -> tuple[list[str], list[str]]:
    """(image families, text families) to cycle through; a clear error for unknown names."""
    if modality not in MODALITIES:
        raise DataError(f"--modality {modality!r}: expected one of {', '.join(MODALITIES)}")
    chosen = list(families or IMAGE_FAMILIES)
    unknown = [f for f in chosen if f not in IMAGE_FAMILIES]
    if unknown:
        raise DataError(
            f"unknown task families {', '.join(unknown)}; choose from {', '.join(IMAGE_FAMILIES)}"
        )
    image = chosen if modality in ("image", "both") else []
    text = [f for f in chosen if f in TEXT_FAMILIES] if modality in ("text", "both") else []
    if modality == "text" and not text:
        raise DataError(f"no text version of {', '.join(chosen)}; text families: {', '.join(TEXT_FAMILIES)}")
    return image, text


def planned_tasks(n: int, seed: int, image: list[str], text: list[str]) -> list[tuple[str, str, int]]:
    """(modality, family, generator seed) per sample: modalities alternate, families cycle."""
    plan, counts = [], {"image": 0, "text": 0}
    for i in range(n):
        modality = "text" if not image or (text and i % 2 == 1) else "image"
        families = image if modality == "image" else text
        plan.append(
            (modality, families[counts[modality] % len(families)], task_seed("visual-tasks", seed, i))
        )
        counts[modality] += 1
    return plan


def build_visual_tasks(
    out: str | Path,
    n: int = 200,
    seed: int = 0,
    families: Sequence[str] | None = None,
    modality: str = "image",
    val_fraction: float = 0.05,
    shard_bytes: int = 256_000,
    progress: bool = True,
) -> dict[str, Any]:
    from tqdm import tqdm

    image, text = check_families(families, modality)
    plan = planned_tasks(n, seed, image, text)
    check_sandbox()  # fail before the folder's previous shards are removed
    sink = ShardSink(out, val_fraction, shard_bytes)
    first_failure = ""
    try:
        for i, (mod, family, gen_seed) in enumerate(
            tqdm(plan, desc="visual-tasks", unit="task", disable=not progress)
        ):
            task = image_task(family, gen_seed) if mod == "image" else text_task(family, gen_seed)
            result = run_reference(task)
            if verified_answer(task, result) is None:
                sink.count("failed")
                sink.count(f"failed_{family}_{mod}")
                first_failure = first_failure or f"{task.id}: {failure(result)}"
                log.warning("visual-tasks: %s does not verify: %s", task.id, failure(result))
                continue
            sink.count("verified")
            sink.count(f"{family}_{mod}")
            record = task.to_record(
                f"visual-task-{family}-{mod}",
                generator=BUILDER_VERSION,
                seed=seed,
                index=i,
                task_seed=gen_seed,
            )
            sink.write(task_sample(task, record))
    finally:
        manifest = sink.close(
            "visual-tasks",
            "chat",
            seed,
            BUILDER_VERSION,
            families={"image": image, "text": text},
            task_modality=modality,
        )
    if n and not manifest["counts"].get("verified"):
        raise DataError(f"no task's reference program verified in the sandbox (first: {first_failure})")
    return manifest
