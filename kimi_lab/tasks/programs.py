"""The reference programs: one way to read the picture per modality, one solver per family.

A program is ``prelude + SOLVE_MARK + body``. The prelude turns the picture into
``grids`` (2-D arrays of symbols), ``g = grids[0]`` and ``S`` (pixels per cell):
from text, it splits ``grid_N.txt`` into characters; from pixels, it samples each
cell's centre and takes the nearest legend colour. The body is the same text for
both modalities, which is the point of zero-vision SFT: a model that learned the
body on text only has to learn the one reading step to solve the image version.
Programs use numpy, the standard library and (images) PIL only, and print the
answer on their last line.
"""

from __future__ import annotations

from typing import Any

from kimi_lab.tasks.scenes import SYMBOLS, colour_name

SOLVE_MARK = "# solve on the grid of symbols\n"

TEXT_PRELUDE = """\
import glob
# read the picture: one symbol per cell, one grid per grid_N.txt
grids = [np.array([list(row) for row in open(f).read().split()]) for f in sorted(glob.glob('grid_*.txt'))]
g, S = grids[0], 1
"""

IMAGE_PRELUDE = """\
# read the picture: the colour at each cell's centre, mapped to the nearest legend colour
LEGEND = {legend}
C = {cell}  # pixels per cell
keys, rgb = np.array(list(LEGEND)), np.array(list(LEGEND.values()))
grids = []
for im in images:
    centres = np.asarray(im, int)[C // 2 :: C, C // 2 :: C]
    grids.append(keys[((centres[:, :, None] - rgb) ** 2).sum(-1).argmin(-1)])
g, S = grids[0], C
"""

COMPONENTS = """\
def components(mask):
    # 4-connected groups of True cells, each a list of (row, col)
    seen, groups = np.zeros(mask.shape, bool), []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start] = True
        stack, group = [start], []
        while stack:
            y, x = stack.pop()
            group.append((int(y), int(x)))
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        groups.append(group)
    return groups
"""

BFS = """\
from collections import deque
start = tuple(int(v) for v in np.argwhere(g == 'S')[0])
dist, queue = {start: 0}, deque([start])
while queue:
    y, x = queue.popleft()
    for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
        if 0 <= ny < g.shape[0] and 0 <= nx < g.shape[1] and g[ny, nx] != '#' and (ny, nx) not in dist:
            dist[(ny, nx)] = dist[(y, x)] + 1
            queue.append((ny, nx))
print(dist[tuple(int(v) for v in np.argwhere(g == 'G')[0])])
"""

OCR_PROGRAM = """\
from PIL import ImageDraw, ImageFont
# the word was drawn at (2, 2) in PIL's bitmap font, then scaled {scale}x: undo the scaling
K = {scale}
ink = np.asarray(image).min(-1)[::K, ::K] < 128
font = ImageFont.load_default_imagefont()

def render(t):
    im = Image.new('1', (ink.shape[1], ink.shape[0]))
    ImageDraw.Draw(im).text((2, 2), t, fill=1, font=font)
    return np.asarray(im)

def cost(t):
    # wrong pixels left of where t ends; on ties the wider glyph explains more ink
    w = 2 + int(font.getlength(t))
    return int((render(t) != ink)[:, :w].sum()), -w

text = ''
while len(text) < 24 and (render(text) != ink).any():
    text = min((text + c for c in '{alphabet}'), key=cost)
print(text)
"""
OCR_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


def image_prelude(symbols: str, cell: int) -> str:
    legend = "{" + ", ".join(f"{s!r}: {SYMBOLS[s][1]}" for s in symbols) + "}"
    return IMAGE_PRELUDE.format(legend=legend, cell=cell)


def solver(family: str, symbols: str, params: dict[str, Any]) -> str:
    """The modality-independent body of a grid family's program."""
    if family == "count":
        return COMPONENTS + f"print(len(components(g == {params['target']!r})))\n"
    if family == "grounding":
        return (
            COMPONENTS
            + f"""\
boxes = []
for group in components(g == {params["target"]!r}):
    ys, xs = np.array(group).T
    boxes.append([int(xs.min()) * S, int(ys.min()) * S, (int(xs.max()) + 1) * S, (int(ys.max()) + 1) * S])
print(sorted(boxes))
"""
        )
    if family == "diff":
        return COMPONENTS + "print(len(components(grids[0] != grids[1])))\n"
    if family == "maze":
        return BFS
    if family == "shares":
        names = "{" + ", ".join(f"{s!r}: {colour_name(s)!r}" for s in symbols if s != ".") + "}"
        return f"""\
NAMES = {names}
counts = {{k: int((g == k).sum()) for k in NAMES}}
total = sum(counts.values())
print({{NAMES[k]: round(100 * n / total) for k, n in counts.items() if n}})
"""
    raise ValueError(f"no grid solver for family {family!r}")


def grid_program(family: str, modality: str, symbols: str, params: dict[str, Any], cell: int = 1) -> str:
    prelude = TEXT_PRELUDE if modality == "text" else image_prelude(symbols, cell)
    return prelude + SOLVE_MARK + solver(family, symbols, params)


def split_program(code: str) -> tuple[str, str]:
    """(how the picture is read, how the grid is solved)."""
    prelude, _, body = code.partition(SOLVE_MARK)
    return prelude, body


def ocr_program(scale: int) -> str:
    return OCR_PROGRAM.format(scale=scale, alphabet=OCR_ALPHABET)


PLANS = {
    "count": "then count the 4-connected groups of {colour} cells.",
    "grounding": "then box each 4-connected group of {colour} cells.",
    "maze": "then run a breadth-first search from S to G.",
    "shares": "then count the cells of each colour and turn the counts into percentages.",
    "diff": "then count the 4-connected groups of cells where the two grids differ.",
}
READS = {
    "text": "I'll load the grid file{s} into arrays of symbols, ",
    "image": "I'll sample each cell's centre pixel and map it to the nearest legend colour, ",
}


def plan(family: str, modality: str, params: dict[str, Any], n_grids: int = 1) -> str:
    """The assistant's one-sentence plan before its tool call."""
    if family == "ocr":
        return "I'll undo the scaling and match the ink against PIL's bitmap font, glyph by glyph."
    colour = colour_name(params["target"]) if "target" in params else ""
    return READS[modality].format(s="s" if n_grids > 1 else "") + PLANS[family].format(colour=colour)
