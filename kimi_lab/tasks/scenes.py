"""Abstract pictures: grids of one-character symbols, before they become pixels or text.

Every grid family (counting, grounding, maze, pie shares, differences) is generated
once here, as label grids plus the ground truth in grid cells. ``visual.py`` paints
the grids into images and ``zero_vision.py`` writes them as text, so an image task
and its text twin are the same problem, and the programs that solve them differ only
in how they read the picture back into a grid.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# symbol -> (colour name, RGB). 'S' and 'G' are the maze's start and goal.
SYMBOLS: dict[str, tuple[str, tuple[int, int, int]]] = {
    ".": ("white", (255, 255, 255)),
    "#": ("black", (0, 0, 0)),
    "r": ("red", (220, 50, 47)),
    "g": ("green", (40, 160, 70)),
    "b": ("blue", (40, 90, 220)),
    "y": ("yellow", (240, 200, 30)),
    "p": ("purple", (140, 70, 180)),
    "o": ("orange", (245, 130, 20)),
    "S": ("green", (40, 160, 70)),
    "G": ("red", (220, 50, 47)),
}
SHAPE_COLOURS = "rgbyp"
PIE_COLOURS = "rgbyop"
MAZE_SYMBOLS = ".#SG"
GRID_FAMILIES = ("count", "grounding", "maze", "shares", "diff")

# Polyominoes as (row, col) offsets: varied shapes whose cells are 4-connected.
POLYOMINOES = (
    ((0, 0),),
    ((0, 0), (0, 1)),
    ((0, 0), (0, 1), (0, 2)),
    ((0, 0), (1, 0), (2, 0)),
    ((0, 0), (0, 1), (1, 0), (1, 1)),
    ((0, 0), (1, 0), (2, 0), (2, 1)),
    ((0, 1), (1, 0), (1, 1), (1, 2), (2, 1)),
    ((0, 0), (0, 1), (0, 2), (1, 1)),
    ((0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)),
)


@dataclass
class Scene:
    """Label grids, the symbols they may use, the question's parameters and the answer in cells."""

    family: str
    grids: list[np.ndarray]  # (H, W) arrays of one-character symbols
    symbols: str  # the legend: every symbol the grids may contain
    answer: Any
    params: dict[str, Any] = field(default_factory=dict)


def colour_name(symbol: str) -> str:
    return SYMBOLS[symbol][0]


def blank(h: int, w: int) -> np.ndarray:
    return np.full((h, w), ".", dtype="<U1")


def place_shapes(rng: random.Random, grid: np.ndarray, colours: list[str]) -> list[list[tuple[int, int]]]:
    """Paint one random polyomino per colour, each at least one cell (diagonals too) from any other.

    The gap is what makes "shapes" well defined: a 4-connected group of one colour is
    exactly one shape. Returns the cells of the shapes placed (a crowded grid may drop some).
    """
    h, w = grid.shape
    blocked = grid != "."
    placed = []
    for colour in colours:
        cells = rng.choice(POLYOMINOES)
        for _ in range(60):
            y0, x0 = rng.randrange(h), rng.randrange(w)
            spot = [(y0 + dy, x0 + dx) for dy, dx in cells]
            if all(y < h and x < w and not blocked[y, x] for y, x in spot):
                break
        else:
            continue
        for y, x in spot:
            grid[y, x] = colour
            blocked[max(0, y - 1) : y + 2, max(0, x - 1) : x + 2] = True
        placed.append(spot)
    return placed


def count_scene(rng: random.Random, h: int = 16, w: int = 16) -> Scene:
    target = rng.choice(SHAPE_COLOURS)
    others = [c for c in SHAPE_COLOURS if c != target]
    colours = [target] * rng.randint(1, 6) + [rng.choice(others) for _ in range(rng.randint(2, 7))]
    rng.shuffle(colours)
    grid = blank(h, w)
    shapes = place_shapes(rng, grid, colours)
    n = sum(grid[s[0]] == target for s in shapes)
    return Scene("count", [grid], "." + SHAPE_COLOURS, int(n), {"target": target})


def grounding_scene(rng: random.Random, h: int = 16, w: int = 16) -> Scene:
    target = rng.choice(SHAPE_COLOURS)
    others = [c for c in SHAPE_COLOURS if c != target]
    colours = [target] * rng.randint(1, 3) + [rng.choice(others) for _ in range(rng.randint(2, 5))]
    rng.shuffle(colours)
    grid = blank(h, w)
    shapes = place_shapes(rng, grid, colours)
    boxes = []
    for cells in shapes:
        if grid[cells[0]] == target:
            ys, xs = zip(*cells)
            boxes.append([min(xs), min(ys), max(xs) + 1, max(ys) + 1])
    return Scene("grounding", [grid], "." + SHAPE_COLOURS, sorted(boxes), {"target": target})


def maze_distances(grid: np.ndarray, start: tuple[int, int]) -> dict[tuple[int, int], int]:
    """Moves on the shortest 4-connected path from start to every reachable non-wall cell."""
    dist = {start: 0}
    queue = deque([start])
    while queue:
        y, x = queue.popleft()
        for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
            inside = 0 <= ny < grid.shape[0] and 0 <= nx < grid.shape[1]
            if inside and grid[ny, nx] != "#" and (ny, nx) not in dist:
                dist[(ny, nx)] = dist[(y, x)] + 1
                queue.append((ny, nx))
    return dist


def maze_scene(rng: random.Random) -> Scene:
    """A depth-first maze with a few extra openings, so several routes compete and BFS matters."""
    k = rng.randint(5, 8)
    size = 2 * k + 1
    grid = np.full((size, size), "#", dtype="<U1")
    stack, seen = [(1, 1)], {(1, 1)}
    grid[1, 1] = "."
    while stack:
        y, x = stack[-1]
        steps = [(dy, dx) for dy, dx in ((2, 0), (-2, 0), (0, 2), (0, -2)) if (y + dy, x + dx) not in seen]
        steps = [(dy, dx) for dy, dx in steps if 0 < y + dy < size and 0 < x + dx < size]
        if not steps:
            stack.pop()
            continue
        dy, dx = rng.choice(steps)
        grid[y + dy // 2, x + dx // 2] = grid[y + dy, x + dx] = "."
        seen.add((y + dy, x + dx))
        stack.append((y + dy, x + dx))
    for _ in range(rng.randint(1, k)):
        y, x = rng.randrange(1, size - 1), rng.randrange(1, size - 1)
        if (y % 2) != (x % 2):  # a wall between two open cells
            grid[y, x] = "."
    free = [(int(y), int(x)) for y, x in np.argwhere(grid == ".")]
    start = rng.choice(free)
    dist = maze_distances(grid, start)
    goal = rng.choice(sorted(c for c, d in dist.items() if d >= max(dist.values()) // 2))  # a real trip
    grid[start], grid[goal] = "S", "G"
    return Scene("maze", [grid], MAZE_SYMBOLS, dist[goal])


def shares(grid: np.ndarray, symbols: str) -> dict[str, int]:
    """Percent of the coloured (non-white) cells per colour name, as the solver rounds them."""
    counts = {s: int((grid == s).sum()) for s in symbols if s != "."}
    total = sum(counts.values())
    return {colour_name(s): round(100 * n / total) for s, n in counts.items() if n}


def pie_scene(rng: random.Random, size: int) -> Scene:
    """A pie chart rasterised on a size x size grid; the answer is what the grid shows."""
    colours = rng.sample(PIE_COLOURS, rng.randint(2, 5))
    values = [rng.randint(1, 9) for _ in colours]
    bounds = np.cumsum(values) / sum(values)
    grid = blank(size, size)
    centre, radius = size / 2, size / 2 - 1
    for y in range(size):
        for x in range(size):
            dx, dy = x + 0.5 - centre, y + 0.5 - centre
            if dx * dx + dy * dy <= radius * radius:
                turn = (math.atan2(dx, -dy) / (2 * math.pi)) % 1.0  # clockwise from 12 o'clock
                grid[y, x] = colours[min(int(np.searchsorted(bounds, turn, side="right")), len(colours) - 1)]
    return Scene("shares", [grid], "." + PIE_COLOURS, shares(grid, PIE_COLOURS), {"values": values})


def diff_scene(rng: random.Random, h: int = 12, w: int = 12) -> Scene:
    """Two copies of a scene; the second has k separate rectangles repainted, every cell changed."""
    first = blank(h, w)
    place_shapes(rng, first, [rng.choice(SHAPE_COLOURS) for _ in range(rng.randint(4, 9))])
    second = first.copy()
    blocked = np.zeros((h, w), bool)
    k = 0
    for _ in range(rng.randint(1, 5)):
        rh, rw = rng.randint(1, 2), rng.randint(1, 2)
        y0, x0 = rng.randrange(h - rh + 1), rng.randrange(w - rw + 1)
        if blocked[y0 : y0 + rh, x0 : x0 + rw].any():
            continue
        for y in range(y0, y0 + rh):
            for x in range(x0, x0 + rw):
                second[y, x] = rng.choice([s for s in "." + SHAPE_COLOURS if s != first[y, x]])
        blocked[max(0, y0 - 1) : y0 + rh + 1, max(0, x0 - 1) : x0 + rw + 1] = True
        k += 1
    return Scene("diff", [first, second], "." + SHAPE_COLOURS, k)


def make_scene(family: str, rng: random.Random, pie_size: int) -> Scene:
    """One scene of a grid family (the pie's resolution depends on who will look at it)."""
    if family == "count":
        return count_scene(rng)
    if family == "grounding":
        return grounding_scene(rng)
    if family == "maze":
        return maze_scene(rng)
    if family == "shares":
        return pie_scene(rng, pie_size)
    if family == "diff":
        return diff_scene(rng)
    raise ValueError(f"unknown grid family {family!r}; expected one of {', '.join(GRID_FAMILIES)}")


FAMILY_ANSWER_TYPE = {
    "count": "count",
    "grounding": "boxes",
    "maze": "path_length",
    "shares": "shares",
    "diff": "count",
}


def ask(scene: Scene, unit: str) -> str:
    """The family's question, the same for the picture and its text twin (``unit``: pixels or cells)."""
    if scene.family in ("count", "grounding"):
        colour = colour_name(scene.params["target"])
        shape = f"A {colour} shape is a 4-connected group of {colour} cells; shapes never touch each other."
        if scene.family == "count":
            return f"How many {colour} shapes are there? {shape} Answer with one integer."
        return (
            f"Find every {colour} shape and give its bounding box [x0, y0, x1, y1] in {unit} "
            f"(x to the right, y down, from the top-left corner; x1 and y1 exclusive). {shape} "
            "Answer with a list of boxes, e.g. [[0, 10, 20, 30]]."
        )
    if scene.family == "maze":
        return (
            "How many moves does the shortest path from S to G take, moving up, down, left or right "
            "through open cells? Answer with one integer."
        )
    if scene.family == "shares":
        return (
            "What share of the pie does each colour take? Answer with whole percents per colour, "
            "e.g. {'red': 40, 'blue': 60}."
        )
    return (
        "The second picture is the first with some separate regions repainted (a region is a "
        "4-connected group of changed cells; regions never touch). How many regions differ? "
        "Answer with one integer."
    )
