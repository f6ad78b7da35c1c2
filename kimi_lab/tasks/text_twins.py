"""Zero-vision SFT (K2.5): the visual families as text, solved by the same programs.

Each problem's picture is a grid of symbols, in ``grid_0.txt`` (and ``grid_1.txt``
for differences) and inline in the question. Its reference program reads the files
into the same ``grids``/``g`` the image program builds from pixels, then runs the
identical solver body (``programs.solver``). K2.5 found that text-only trajectories
like these teach visual tool use, and that adding visual trajectories hurt;
``with_visual_traces`` mixes some in to test that.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from kimi_lab.chat_format import Message
from kimi_lab.tasks.base import Task, task_seed
from kimi_lab.tasks.programs import grid_program, plan
from kimi_lab.tasks.scenes import FAMILY_ANSWER_TYPE, GRID_FAMILIES, Scene, ask, colour_name, make_scene
from kimi_lab.tasks.solve import failure, run_reference, trajectory
from kimi_lab.tasks.visual import FAMILIES as VISUAL_FAMILIES
from kimi_lab.tasks.visual import image_task

PIE_CELLS = 24
FAMILIES = GRID_FAMILIES


def grid_text(grid: np.ndarray) -> str:
    return "\n".join("".join(row) for row in grid) + "\n"


def _intro(scene: Scene) -> str:
    files = " and ".join(f"grid_{i}.txt" for i in range(len(scene.grids)))
    legend = ", ".join(f"'{s}' {colour_name(s)}" for s in scene.symbols)
    if scene.family == "maze":
        legend = "'#' wall, '.' open, 'S' start, 'G' goal"
        what = "is a maze"
    elif scene.family == "shares":
        what = "is a pie chart"
    else:
        what = "are two pictures" if len(scene.grids) > 1 else "is a picture"
    blocks = [f"```\n{grid_text(g)}```" for g in scene.grids]
    if len(blocks) > 1:  # name each grid when there are two
        blocks = [f"grid_{i}.txt:\n{b}" for i, b in enumerate(blocks)]
    return f"{files} {what} written as text, one symbol per cell ({legend}):\n" + "\n".join(blocks) + "\n"


def text_task(family: str, seed: int) -> Task:
    """One seeded text task: the twin of ``visual.image_task(family, seed)`` at text resolution."""
    scene = make_scene(family, random.Random(seed), pie_size=PIE_CELLS)
    return Task(
        id=f"{family}-text-{seed}",
        family=family,
        modality="text",
        question=_intro(scene) + ask(scene, "cells"),
        answer=scene.answer,
        answer_type=FAMILY_ANSWER_TYPE[family],
        solution_code=grid_program(family, "text", scene.symbols, scene.params),
        files={f"grid_{i}.txt": grid_text(g) for i, g in enumerate(scene.grids)},
        plan=plan(family, "text", scene.params, len(scene.grids)),
    )


@dataclass
class Trace:
    """One attempt at a trajectory: the task, and the conversation or why there is none."""

    task: Task
    messages: list[Message] | None
    error: str = ""


def is_visual(i: int, fraction: float) -> bool:
    """Spreads exactly round-down(n * fraction) visual samples evenly over the first n."""
    return int((i + 1) * fraction) > int(i * fraction)


def sft_traces(
    n: int,
    seed: int = 0,
    families: tuple[str, ...] = FAMILIES,
    with_visual_traces: bool = False,
    visual_fraction: float = 0.2,
    visual_families: tuple[str, ...] = VISUAL_FAMILIES,
) -> Iterator[Trace]:
    """n attempts, families in turn; each task runs in the sandbox once, its output kept verbatim."""
    n_text = n_visual = 0
    for i in range(n):
        if with_visual_traces and is_visual(i, visual_fraction):
            task = image_task(visual_families[n_visual % len(visual_families)], task_seed("sft", seed, i))
            n_visual += 1
        else:
            task = text_task(families[n_text % len(families)], task_seed("sft", seed, i))
            n_text += 1
        result = run_reference(task)
        messages = trajectory(task, result)
        yield Trace(task, messages, "" if messages else failure(result))
