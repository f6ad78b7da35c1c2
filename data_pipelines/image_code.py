"""``kimi-lab data build image-code``: programs next to the screenshots they render.

K2.5's vision-based coding learns from image-code pairs. Here the programs are
generated procedurally (seeded): SVG scenes (shapes, bar and pie charts, labelled
diagrams) rendered by resvg, and HTML+CSS pages (card grids, tables, bar charts
made of boxes, page layouts) rendered by headless Chromium. ``--src DIR`` renders
a user's own .svg / .html files instead. Each sample holds the PNG, the code
(``.svg`` or ``.html``) and a record with the renderer, the generator and the
scene's labels, and a caption (a sentence describing the picture, from the labels:
``kimi-lab data build captions`` pairs the same pictures with it instead of the code,
the control of ``experiment vision_coding``).
"""

from __future__ import annotations

import contextlib
import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_pipelines.common import ShardSink
from kimi_lab.data.schema import make_record, sample_key
from kimi_lab.errors import DataError
from kimi_lab.tools.renderers import HtmlRenderer, render_svg, resvg_version

BUILDER_VERSION = "image-code/1"

PALETTE = {
    "red": "#d62828",
    "orange": "#f77f00",
    "yellow": "#fcbf49",
    "green": "#2a9d8f",
    "blue": "#1d4e89",
    "purple": "#7b2cbf",
    "pink": "#ff70a6",
    "teal": "#00a6a6",
    "brown": "#8d5524",
    "gray": "#6c757d",
    "black": "#111111",
    "navy": "#14213d",
}
LIGHT = ["#ffffff", "#f8f9fa", "#fdf6e3", "#eef4ff", "#f1faee", "#fff7e6"]
WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "orbit",
    "river",
    "stone",
    "cloud",
    "signal",
    "vector",
    "matrix",
    "kernel",
    "tensor",
    "router",
    "expert",
    "token",
    "layer",
    "window",
    "budget",
    "swarm",
    "agent",
    "chart",
    "table",
    "report",
    "north",
    "south",
    "east",
    "west",
    "spring",
    "autumn",
    "harbor",
    "garden",
    "market",
    "museum",
    "library",
    "station",
    "bridge",
    "tower",
    "valley",
    "forest",
    "desert",
    "island",
]


@dataclass
class CodeSample:
    language: str  # "svg" or "html"
    code: str
    width: int
    height: int
    labels: dict[str, Any] = field(default_factory=dict)


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _colour(rng: random.Random) -> tuple[str, str]:
    name = rng.choice(sorted(PALETTE))
    return name, PALETTE[name]


# ----------------------------------------------------------------------------- SVG
def svg_scene(rng: random.Random) -> CodeSample:
    w, h = rng.randrange(160, 449, 8), rng.randrange(128, 385, 8)
    kind = rng.choice(["shapes", "bar_chart", "pie_chart", "diagram"])
    bg = rng.choice(LIGHT)
    body, labels = {
        "shapes": _svg_shapes,
        "bar_chart": _svg_bars,
        "pie_chart": _svg_pie,
        "diagram": _svg_diagram,
    }[kind](rng, w, h)
    code = "\n".join(
        [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}">',
            f'  <rect width="{w}" height="{h}" fill="{bg}"/>',
            *("  " + line for line in body),
            "</svg>",
        ]
    )
    return CodeSample("svg", code, w, h, {"scene": kind, **labels})


def _svg_shapes(rng: random.Random, w: int, h: int) -> tuple[list[str], dict[str, Any]]:
    lines, shapes = [], []
    for _ in range(rng.randint(2, 7)):
        name, fill = _colour(rng)
        kind = rng.choice(["rect", "circle", "ellipse", "triangle", "line"])
        x, y = rng.randrange(10, w - 40), rng.randrange(10, h - 40)
        s = rng.randrange(14, max(15, min(w, h) // 3))
        if kind == "rect":
            lines.append(
                f'<rect x="{x}" y="{y}" width="{s}" height="{rng.randrange(10, s + 10)}" rx="{rng.choice([0, 0, 4])}" fill="{fill}"/>'
            )
        elif kind == "circle":
            lines.append(f'<circle cx="{x + s // 2}" cy="{y + s // 2}" r="{s // 2}" fill="{fill}"/>')
        elif kind == "ellipse":
            lines.append(
                f'<ellipse cx="{x + s // 2}" cy="{y + s // 3}" rx="{s // 2}" ry="{max(4, s // 3)}" fill="{fill}"/>'
            )
        elif kind == "triangle":
            lines.append(f'<polygon points="{x},{y + s} {x + s // 2},{y} {x + s},{y + s}" fill="{fill}"/>')
        else:
            lines.append(
                f'<line x1="{x}" y1="{y}" x2="{min(w - 5, x + s * 2)}" y2="{min(h - 5, y + s)}" stroke="{fill}" stroke-width="{rng.randint(2, 5)}"/>'
            )
        shapes.append({"shape": kind, "colour": name})
    return lines, {"shapes": shapes}


def _svg_bars(rng: random.Random, w: int, h: int) -> tuple[list[str], dict[str, Any]]:
    n = rng.randint(3, 7)
    values = [rng.randint(1, 10) for _ in range(n)]
    _, fill = _colour(rng)
    title = _words(rng, 2).title()
    left, bottom, top = 30, h - 24, 30
    bw = (w - left - 10) / n
    scale = (bottom - top) / max(values)
    lines = [
        f'<text x="{w // 2}" y="18" font-family="DejaVu Sans" font-size="13" text-anchor="middle">{title}</text>',
        f'<line x1="{left}" y1="{bottom}" x2="{w - 5}" y2="{bottom}" stroke="#333"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="#333"/>',
    ]
    for i, v in enumerate(values):
        x = left + i * bw + bw * 0.15
        lines.append(
            f'<rect x="{x:.1f}" y="{bottom - v * scale:.1f}" width="{bw * 0.7:.1f}" height="{v * scale:.1f}" fill="{fill}"/>'
        )
        lines.append(
            f'<text x="{x + bw * 0.35:.1f}" y="{bottom + 14}" font-family="DejaVu Sans" font-size="10" text-anchor="middle">{chr(65 + i)}</text>'
        )
    return lines, {"title": title, "values": values}


def _svg_pie(rng: random.Random, w: int, h: int) -> tuple[list[str], dict[str, Any]]:
    n = rng.randint(2, 5)
    values = [rng.randint(1, 9) for _ in range(n)]
    total = sum(values)
    cx, cy, r = w // 2, h // 2, min(w, h) // 2 - 10
    lines, start, slices = [], -math.pi / 2, []
    for v in values:
        name, fill = _colour(rng)
        end = start + 2 * math.pi * v / total
        x1, y1 = cx + r * math.cos(start), cy + r * math.sin(start)
        x2, y2 = cx + r * math.cos(end), cy + r * math.sin(end)
        large = 1 if end - start > math.pi else 0
        if n == 1 or v == total:
            lines.append(f'<circle cx="{cx}" cy="{cy}" r="{r}" fill="{fill}"/>')
        else:
            lines.append(
                f'<path d="M{cx},{cy} L{x1:.1f},{y1:.1f} A{r},{r} 0 {large} 1 {x2:.1f},{y2:.1f} Z" fill="{fill}"/>'
            )
        slices.append({"colour": name, "share": round(v / total, 4)})
        start = end
    return lines, {"slices": slices}


def _svg_diagram(rng: random.Random, w: int, h: int) -> tuple[list[str], dict[str, Any]]:
    n = rng.randint(2, 4)
    box_w, box_h = (w - 20 * (n + 1)) / n, min(60, h // 3)
    y = (h - box_h) / 2
    lines, names = [], []
    for i in range(n):
        x = 20 + i * (box_w + 20)
        _, fill = _colour(rng)
        label = rng.choice(WORDS)
        names.append(label)
        lines.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{box_w:.1f}" height="{box_h}" rx="6" fill="{fill}"/>'
        )
        lines.append(
            f'<text x="{x + box_w / 2:.1f}" y="{y + box_h / 2 + 4:.1f}" font-family="DejaVu Sans" font-size="12" fill="#fff" text-anchor="middle">{label}</text>'
        )
        if i:
            lines.append(
                f'<line x1="{x - 18:.1f}" y1="{y + box_h / 2:.1f}" x2="{x - 2:.1f}" y2="{y + box_h / 2:.1f}" stroke="#333" stroke-width="2"/>'
            )
    return lines, {"boxes": names}


# ---------------------------------------------------------------------------- HTML
def html_page(rng: random.Random) -> CodeSample:
    w, h = rng.randrange(320, 641, 16), rng.randrange(240, 481, 16)
    kind = rng.choice(["cards", "table", "bar_chart", "layout"])
    body, css, labels = {
        "cards": _html_cards,
        "table": _html_table,
        "bar_chart": _html_bars,
        "layout": _html_layout,
    }[kind](rng)
    bg = rng.choice(LIGHT)
    code = "\n".join(
        [
            "<!DOCTYPE html>",
            "<html>",
            "<head>",
            '<meta charset="utf-8">',
            "<style>",
            f"  body {{ margin: 0; padding: 12px; background: {bg}; font-family: 'DejaVu Sans', sans-serif; font-size: 14px; }}",
            *("  " + c for c in css),
            "</style>",
            "</head>",
            "<body>",
            *("  " + b for b in body),
            "</body>",
            "</html>",
        ]
    )
    return CodeSample("html", code, w, h, {"scene": kind, **labels})


def _html_cards(rng: random.Random) -> tuple[list[str], list[str], dict[str, Any]]:
    n = rng.randint(2, 6)
    css = [
        ".grid { display: flex; flex-wrap: wrap; gap: 10px; }",
        ".card { width: 130px; padding: 8px; border-radius: 8px; color: #fff; }",
        ".card h3 { margin: 0 0 4px 0; font-size: 15px; }",
    ]
    body, cards = ['<div class="grid">'], []
    for _ in range(n):
        name, colour = _colour(rng)
        title = rng.choice(WORDS).title()
        body.append(
            f'  <div class="card" style="background: {colour}"><h3>{title}</h3><p>{_words(rng, 4)}</p></div>'
        )
        cards.append({"title": title, "colour": name})
    body.append("</div>")
    return body, css, {"cards": cards}


def _html_table(rng: random.Random) -> tuple[list[str], list[str], dict[str, Any]]:
    rows, cols = rng.randint(2, 6), rng.randint(2, 4)
    _, head = _colour(rng)
    css = [
        "table { border-collapse: collapse; }",
        "td, th { border: 1px solid #999; padding: 4px 10px; }",
        f"th {{ background: {head}; color: #fff; }}",
    ]
    header = [rng.choice(WORDS).title() for _ in range(cols)]
    cells = [[rng.randint(0, 999) for _ in range(cols)] for _ in range(rows)]
    body = ["<table>", "  <tr>" + "".join(f"<th>{c}</th>" for c in header) + "</tr>"]
    body += ["  <tr>" + "".join(f"<td>{v}</td>" for v in row) + "</tr>" for row in cells]
    body.append("</table>")
    return body, css, {"header": header, "cells": cells}


def _html_bars(rng: random.Random) -> tuple[list[str], list[str], dict[str, Any]]:
    values = [rng.randint(1, 10) for _ in range(rng.randint(3, 7))]
    _, colour = _colour(rng)
    css = [
        ".chart { display: flex; align-items: flex-end; gap: 8px; height: 160px; border-bottom: 2px solid #333; }",
        f".bar {{ width: 28px; background: {colour}; }}",
    ]
    title = _words(rng, 2).title()
    body = [f"<h2>{title}</h2>", '<div class="chart">']
    body += [f'  <div class="bar" style="height: {v * 15}px"></div>' for v in values]
    body.append("</div>")
    return body, css, {"title": title, "values": values}


def _html_layout(rng: random.Random) -> tuple[list[str], list[str], dict[str, Any]]:
    _, header = _colour(rng)
    _, side = _colour(rng)
    css = [
        f"header {{ background: {header}; color: #fff; padding: 10px; font-size: 18px; }}",
        ".main { display: flex; gap: 10px; margin-top: 10px; }",
        f"nav {{ background: {side}; color: #fff; width: 110px; padding: 8px; }}",
        "article { flex: 1; background: #fff; padding: 8px; border: 1px solid #ccc; }",
    ]
    title = _words(rng, 2).title()
    links = [rng.choice(WORDS).title() for _ in range(rng.randint(2, 4))]
    body = [
        f"<header>{title}</header>",
        '<div class="main">',
        "  <nav>" + "<br>".join(links) + "</nav>",
        f"  <article><b>{_words(rng, 3).title()}</b><p>{_words(rng, 12)}</p></article>",
        "</div>",
    ]
    return body, css, {"title": title, "links": links}


# ------------------------------------------------------------------------- captions
def _listing(items: list[str]) -> str:
    return ", ".join(items[:-1]) + (" and " if len(items) > 1 else "") + items[-1] if items else "nothing"


def describe(prog: CodeSample) -> str:
    """What a picture shows, in one or two sentences, from the generator's labels (not its code)."""
    lab, size = prog.labels, f"{prog.width}x{prog.height}"
    scene = lab.get("scene")
    if prog.language == "svg":
        if scene == "shapes":
            shapes = [f"a {s['colour']} {s['shape']}" for s in lab["shapes"]]
            return f"A {size} picture of {len(shapes)} shapes: {_listing(shapes)}."
        if scene == "bar_chart":
            bars = [f"{chr(65 + i)} {v}" for i, v in enumerate(lab["values"])]
            return f"A {size} bar chart titled {lab['title']!r} with {len(bars)} bars: {_listing(bars)}."
        if scene == "pie_chart":
            parts = [f"{s['colour']} {round(100 * s['share'])}%" for s in lab["slices"]]
            return f"A {size} pie chart of {len(parts)} slices: {_listing(parts)}."
        if scene == "diagram":
            return f"A {size} diagram of {len(lab['boxes'])} boxes joined left to right: {_listing(lab['boxes'])}."
    elif scene == "cards":
        cards = [f"{c['title']} ({c['colour']})" for c in lab["cards"]]
        return f"A {size} web page with {len(cards)} cards: {_listing(cards)}."
    elif scene == "table":
        rows = len(lab["cells"])
        return f"A {size} web page with a table of {rows} rows under the headers {_listing(lab['header'])}."
    elif scene == "bar_chart":
        return f"A {size} web page with a bar chart titled {lab['title']!r}: bars of {_listing([str(v) for v in lab['values']])}."
    elif scene == "layout":
        return (
            f"A {size} web page with the header {lab['title']!r}, a side menu ({_listing(lab['links'])}) "
            "and an article."
        )
    return f"A {size} {'picture' if prog.language == 'svg' else 'web page'}."


# --------------------------------------------------------------------------- build
def user_programs(src: Path) -> Iterator[CodeSample]:
    if not src.exists():
        raise DataError(f"--src {src}: no such file or folder")
    files = (
        [src]
        if src.is_file()
        else sorted(p for p in src.rglob("*") if p.suffix.lower() in (".svg", ".html", ".htm"))
    )
    if not files:
        raise DataError(f"--src {src}: no .svg or .html files found")
    for path in files:
        code = path.read_text(encoding="utf-8", errors="replace")
        language = "svg" if path.suffix.lower() == ".svg" else "html"
        yield CodeSample(language, code, 800, 600, {"path": str(path.name)})


def build_image_code(
    out: str | Path,
    n: int = 200,
    seed: int = 0,
    src: str | Path | None = None,
    val_fraction: float = 0.05,
    shard_bytes: int = 256_000,
    progress: bool = True,
) -> dict[str, Any]:
    from tqdm import tqdm

    rng = random.Random(seed)
    if src is not None:
        programs = list(user_programs(Path(src)))
    else:
        # Alternate SVG and HTML so both renderers are always exercised.
        programs = [svg_scene(rng) if i % 2 == 0 else html_page(rng) for i in range(n)]
    sink = ShardSink(out, val_fraction, shard_bytes)
    versions = {"svg": resvg_version()}
    with contextlib.ExitStack() as stack:
        html = None
        if any(p.language == "html" for p in programs):
            html = stack.enter_context(HtmlRenderer())
            versions["html"] = html.version
        try:
            for i, prog in enumerate(tqdm(programs, desc="image-code", unit="pair", disable=not progress)):
                try:
                    png = (
                        render_svg(prog.code)
                        if prog.language == "svg"
                        else html.render(prog.code, prog.width, prog.height)
                    )
                except DataError:
                    sink.count("render_failed")
                    continue
                origin = "user" if src else "procedural"
                record = make_record(
                    "image",
                    f"{prog.language}-{origin}",
                    language=prog.language,
                    renderer=versions[prog.language],
                    generator=BUILDER_VERSION,
                    seed=seed,
                    index=i,
                    width=prog.width,
                    height=prog.height,
                    labels=prog.labels,
                    caption=describe(prog),
                )
                sink.write(
                    {
                        "__key__": sample_key(f"{prog.language}-{origin}", prog.code.encode()),
                        "png": png,
                        prog.language: prog.code.encode(),
                        "json": json.dumps(record).encode(),
                    }
                )
        finally:
            manifest = sink.close(
                "image-code",
                "image",
                seed,
                BUILDER_VERSION,
                renderers=versions,
                source=str(src) if src else "procedural",
            )
    return manifest
