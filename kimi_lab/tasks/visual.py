"""Image tasks whose answers a short program can read off the pixels.

Grid families (count, grounding, maze, shares, diff) paint a ``scenes`` grid with
flat palette colours, ``CELL`` x ``CELL`` pixels per cell on white, so sampling each
cell's centre recovers the grid exactly. The pie is painted at one pixel per cell
(``PIE_PIXELS`` wide). ``ocr`` draws a short word or number in PIL's bitmap font,
scaled up ``OCR_SCALE`` times; its reference program decodes it by matching glyphs
rendered in the sandbox with the same font (see ``programs.OCR_PROGRAM``), so every
family, OCR included, has a program that reproduces its ground truth.
"""

from __future__ import annotations

import random

import numpy as np

from kimi_lab.tasks.base import Task
from kimi_lab.tasks.programs import OCR_ALPHABET, grid_program, ocr_program, plan
from kimi_lab.tasks.scenes import (
    FAMILY_ANSWER_TYPE,
    GRID_FAMILIES,
    SYMBOLS,
    Scene,
    ask,
    colour_name,
    make_scene,
)

CELL = 10
PIE_PIXELS = 120
OCR_SCALE = 4
FAMILIES = (*GRID_FAMILIES, "ocr")


def paint(grid: np.ndarray, cell: int) -> np.ndarray:
    """A symbol grid as uint8 RGB, each cell a cell x cell block of its colour."""
    lut = {s: rgb for s, (_, rgb) in SYMBOLS.items()}
    rgb = np.array([lut[s] for s in grid.ravel()], np.uint8).reshape(*grid.shape, 3)
    return np.repeat(np.repeat(rgb, cell, axis=0), cell, axis=1)


def _intro(scene: Scene, cell: int) -> str:
    names = " and ".join(f"image_{i}.png" for i in range(len(scene.grids)))
    if scene.family == "maze":
        return (
            f"{names} shows a maze drawn on a grid of {cell}x{cell}-pixel cells: black walls, white open "
            "cells, the start S is the green cell and the goal G the red cell."
        )
    if scene.family == "shares":
        colours = ", ".join(colour_name(s) for s in scene.symbols if s != ".")
        return f"{names} shows a pie chart on white; the slices may be {colours}."
    colours = ", ".join(colour_name(s) for s in scene.symbols if s != ".")
    shows = "show two pictures" if len(scene.grids) > 1 else "shows a picture"
    return (
        f"{names} {shows} drawn on a grid of {cell}x{cell}-pixel cells: coloured cells ({colours}) "
        "on a white background."
    )


def grid_task(family: str, seed: int) -> Task:
    rng = random.Random(seed)
    scene = make_scene(family, rng, pie_size=PIE_PIXELS)
    cell = 1 if family == "shares" else CELL
    answer = scene.answer
    if family == "grounding":
        answer = [[v * cell for v in box] for box in answer]
    return Task(
        id=f"{family}-image-{seed}",
        family=family,
        modality="image",
        question=f"{_intro(scene, cell)} {ask(scene, 'pixels')}",
        answer=answer,
        answer_type=FAMILY_ANSWER_TYPE[family],
        solution_code=grid_program(family, "image", scene.symbols, scene.params, cell),
        images=[paint(g, cell) for g in scene.grids],
        plan=plan(family, "image", scene.params, len(scene.grids)),
    )


def random_text(rng: random.Random) -> str:
    """A made-up word, a number or a code: strings a language prior cannot guess."""
    kind = rng.choice(["word", "number", "code"])
    if kind == "word":
        return "".join(rng.choice("bcdfghklmnprstvz") + rng.choice("aeiou") for _ in range(rng.randint(2, 4)))
    if kind == "number":
        return str(rng.randint(0, 99_999))
    return "".join(rng.choice(OCR_ALPHABET) for _ in range(rng.randint(3, 6)))


def render_word(text: str, scale: int = OCR_SCALE) -> np.ndarray:
    """Black bitmap-font text at (2, 2) on white, scaled up without smoothing."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default_imagefont()
    im = Image.new("L", (int(font.getlength(text)) + 4, 15), 255)
    ImageDraw.Draw(im).text((2, 2), text, fill=0, font=font)
    im = im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST)
    return np.asarray(im.convert("RGB"))


def ocr_task(seed: int) -> Task:
    text = random_text(random.Random(seed))
    return Task(
        id=f"ocr-image-{seed}",
        family="ocr",
        modality="image",
        question=(
            "What is written in image_0.png? It is lowercase letters and digits, drawn at (2, 2) in PIL's "
            f"bitmap font (ImageFont.load_default_imagefont()) and scaled up {OCR_SCALE}x. "
            "Answer with the text exactly."
        ),
        answer=text,
        answer_type="text",
        solution_code=ocr_program(OCR_SCALE),
        images=[render_word(text)],
        plan=plan("ocr", "image", {}),
    )


def image_task(family: str, seed: int) -> Task:
    """One seeded image task of a family in ``FAMILIES``."""
    if family == "ocr":
        return ocr_task(seed)
    return grid_task(family, seed)
