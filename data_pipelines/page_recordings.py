"""``kimi-lab data build page-recordings``: web pages in motion, recorded, next to their code.

K2.5 rebuilds pages from screen recordings. Here each page is generated (seeded)
HTML+CSS whose content moves or changes: a card sliding in (CSS animation), a
colour and size transition started by a script, a progress bar filling, tabs a
script switches, a counter ticking, a list growing. Headless Chromium records it
on a virtual clock (``HtmlRenderer.capture``: the same pixels at the same times on
every run) at ``FPS`` frames per second into a short H.264 clip (PyAV, as the video
kind writes them). Each sample holds the clip, the code (``.html``) and a record
whose ``timeline`` says what happens when (each event's start and end in ms) and
``changes`` which frames differ from the one before, and a ``caption`` describing
the page and its timeline (``kimi-lab data build captions`` pairs the same clips
with it instead of the code, the control of ``experiment vision_coding``). A page
that does not render is a counted skip (``render_failed``).
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from data_pipelines.common import ShardSink
from data_pipelines.image_code import LIGHT, PALETTE, WORDS
from data_pipelines.video import encode_mp4
from kimi_lab.data.schema import make_record, sample_key
from kimi_lab.errors import DataError

BUILDER_VERSION = "page-recordings/1"
FPS = 4
FRAMES = 8
TIMES_MS = [i * 1000 // FPS for i in range(FRAMES)]  # 0, 250, ..., 1750
STEP_MS = 1000 // FPS
# Viewports whose sides are multiples of 28 px (a merged vision token) and hold at most 256
# patches: a frame reaches the model whole, never downscaled.
SIZES = ((224, 168), (252, 168), (224, 196), (280, 168))
SCENES = ("slide", "transition", "progress", "tabs", "counter", "list")


@dataclass
class Recording:
    """A page in motion: its code, viewport, what happens when, and labels."""

    code: str
    width: int
    height: int
    scene: str
    timeline: list[dict[str, Any]]  # {"start_ms", "end_ms", "what"}: instants have start == end
    labels: dict[str, Any] = field(default_factory=dict)

    @property
    def changes(self) -> list[int]:
        """Frames that differ from the frame before: an event runs during (t[k-1], t[k]]."""
        return [
            k
            for k in range(1, len(TIMES_MS))
            if any(
                e["start_ms"] < TIMES_MS[k] and e["end_ms"] > TIMES_MS[k - 1]
                if e["end_ms"] > e["start_ms"]
                else TIMES_MS[k - 1] < e["start_ms"] <= TIMES_MS[k]
                for e in self.timeline
            )
        ]

    @property
    def caption(self) -> str:
        events = "; ".join(
            f"at {e['start_ms'] / 1000:.2f} s {e['what']}"
            if e["end_ms"] == e["start_ms"]
            else f"from {e['start_ms'] / 1000:.2f} s to {e['end_ms'] / 1000:.2f} s {e['what']}"
            for e in self.timeline
        )
        return f"A {self.width}x{self.height} page titled {self.labels['title']!r}: {events}."


def _pick(rng: random.Random) -> tuple[str, str]:
    name = rng.choice(sorted(n for n in PALETTE if n not in ("yellow",)))  # white text must be legible
    return name, PALETTE[name]


def _page(title: str, bg: str, css: list[str], body: list[str], script: str = "") -> str:
    lines = [
        "<!DOCTYPE html>",
        "<html>",
        "<head>",
        '<meta charset="utf-8">',
        "<style>",
        f"body{{margin:0;padding:8px;background:{bg};font:15px 'DejaVu Sans',sans-serif}}",
        "h3{margin:0 0 6px 0;font-size:16px}",
        *css,
        "</style>",
        "</head>",
        "<body>",
        f"<h3>{title}</h3>",
        *body,
    ]
    if script:
        lines += ["<script>", script, "</script>"]
    return "\n".join([*lines, "</body>", "</html>"])


def _on_grid(rng: random.Random, lo: int, hi: int) -> int:
    """A time in ms on the frame grid, in [lo, hi]."""
    return rng.randrange(lo, hi + 1, STEP_MS)


# --------------------------------------------------------------------------- scenes
def _slide(rng: random.Random, w: int, h: int) -> tuple[list[str], list[str], str, list[dict], dict]:
    name, colour = _pick(rng)
    word = rng.choice(WORDS).title()
    side = rng.choice(["left", "right", "top", "bottom"])
    delay, dur = _on_grid(rng, 0, 500), rng.choice([500, 750, 1000])
    bw, bh = rng.randrange(90, 131, 10), rng.randrange(40, 61, 10)
    x, y = rng.randrange(10, w - bw - 9, 2), rng.randrange(34, h - bh - 9, 2)
    # Start just outside the viewport, so the first step of the motion already shows.
    start = {
        "left": f"translateX({-(x + bw)}px)",
        "right": f"translateX({w - x}px)",
        "top": f"translateY({-(y + bh)}px)",
        "bottom": f"translateY({h - y}px)",
    }[side]
    css = [
        f".card{{position:absolute;left:{x}px;top:{y}px;width:{bw}px;height:{bh}px;background:{colour};"
        f"color:#fff;padding:4px;box-sizing:border-box;animation:in {dur}ms ease-out {delay}ms both}}",
        f"@keyframes in{{from{{transform:{start}}}to{{transform:none}}}}",
    ]
    what = f"the {name} card {word!r} slides in from the {side}"
    event = {"start_ms": delay, "end_ms": delay + dur, "what": what}
    return css, [f'<div class="card">{word}</div>'], "", [event], {"colour": name, "side": side, "card": word}


def _transition(rng: random.Random, w: int, h: int) -> tuple[list[str], list[str], str, list[dict], dict]:
    (n1, c1), (n2, c2) = _pick(rng), _pick(rng)
    while n2 == n1:
        n2, c2 = _pick(rng)
    at, dur = _on_grid(rng, 250, 1000), rng.choice([250, 500, 750])
    w0, w1 = rng.randrange(40, 81, 10), rng.randrange(120, min(w - 20, 200) + 1, 10)
    word = rng.choice(WORDS)
    css = [
        f"#b{{width:{w0}px;height:50px;background:{c1};color:#fff;padding:4px;box-sizing:border-box;"
        f"transition:width {dur}ms linear,background-color {dur}ms linear}}",
        f"#b.on{{width:{w1}px;background:{c2}}}",
    ]
    script = f"setTimeout(()=>document.getElementById('b').classList.add('on'),{at});"
    what = f"the {n1} box {word!r} grows from {w0} px to {w1} px wide and turns {n2}"
    event = {"start_ms": at, "end_ms": at + dur, "what": what}
    labels = {"colour": n1, "new_colour": n2, "widths": [w0, w1]}
    return css, [f'<div id="b">{word}</div>'], script, [event], labels


def _progress(rng: random.Random, w: int, h: int) -> tuple[list[str], list[str], str, list[dict], dict]:
    name, colour = _pick(rng)
    delay, dur = _on_grid(rng, 0, 500), rng.choice([750, 1000, 1250])
    pct = rng.randrange(40, 101, 10)
    label = rng.choice(WORDS)
    css = [
        ".track{width:100%;height:22px;background:#ddd}",
        f".bar{{height:100%;background:{colour};animation:fill {dur}ms linear {delay}ms both}}",
        f"@keyframes fill{{from{{width:0}}to{{width:{pct}%}}}}",
    ]
    body = [f"<p>{label}</p>", '<div class="track"><div class="bar"></div></div>']
    what = f"a {name} progress bar {label!r} fills to {pct}%"
    event = {"start_ms": delay, "end_ms": delay + dur, "what": what}
    return css, body, "", [event], {"colour": name, "percent": pct}


def _tabs(rng: random.Random, w: int, h: int) -> tuple[list[str], list[str], str, list[dict], dict]:
    name, colour = _pick(rng)
    n = rng.choice([2, 3])
    names = rng.sample([x.title() for x in WORDS], n)
    texts = [" ".join(rng.choice(WORDS) for _ in range(3)) for _ in range(n)]
    times = sorted(rng.sample(range(STEP_MS, TIMES_MS[-1] + 1, STEP_MS), n - 1))
    css = [
        ".tabs b{display:inline-block;padding:4px 8px;margin-right:4px;background:#ddd}",
        f".tabs b.on{{background:{colour};color:#fff}}",
    ]
    tabs = "".join(f"<b{' class=on' if i == 0 else ''}>{t}</b>" for i, t in enumerate(names))
    body = [f'<div class="tabs">{tabs}</div>', f'<p id="p">{texts[0]}</p>']
    script = "\n".join(
        [
            f"const T={json.dumps(texts)};",
            "function show(i){document.querySelectorAll('.tabs b').forEach((b,j)=>b.className=j==i?'on':'');"
            "document.getElementById('p').textContent=T[i]}",
            *(f"setTimeout(()=>show({i + 1}),{t});" for i, t in enumerate(times)),
        ]
    )
    events = [
        {"start_ms": t, "end_ms": t, "what": f"the tab {names[i + 1]!r} opens, showing {texts[i + 1]!r}"}
        for i, t in enumerate(times)
    ]
    return css, body, script, events, {"colour": name, "tabs": names, "texts": texts}


def _counter(rng: random.Random, w: int, h: int) -> tuple[list[str], list[str], str, list[dict], dict]:
    name, colour = _pick(rng)
    every = rng.choice([250, 500])
    start, step = rng.randrange(0, 100, 5), rng.choice([1, 2, 5, 10])
    ticks = rng.randint(2, TIMES_MS[-1] // every)
    end = start + step * ticks
    label = rng.choice(WORDS)
    css = [f"#n{{font-size:36px;font-weight:bold;color:{colour}}}"]
    body = [f'<div id="n">{start}</div>', f"<p>{label}</p>"]
    script = (
        f"let v={start};const id=setInterval(()=>{{v+={step};"
        f"document.getElementById('n').textContent=v;if(v>={end})clearInterval(id)}},{every});"
    )
    events = [
        {
            "start_ms": every * (i + 1),
            "end_ms": every * (i + 1),
            "what": f"the counter shows {start + step * (i + 1)}",
        }
        for i in range(ticks)
    ]
    return css, body, script, events, {"colour": name, "start": start, "end": end, "every_ms": every}


def _list(rng: random.Random, w: int, h: int) -> tuple[list[str], list[str], str, list[dict], dict]:
    name, colour = _pick(rng)
    every = rng.choice([250, 500])
    rows = max(2, (h - 60) // 22)  # what fits under the title
    items = [rng.choice(WORDS).title() for _ in range(rng.randint(2, min(rows, TIMES_MS[-1] // every + 1)))]
    css = [f"ul{{margin:0;padding-left:20px;color:{colour}}}", "li{line-height:22px}"]
    script = (
        f"const W={json.dumps(items[1:])};let i=0;const id=setInterval(()=>{{"
        "const li=document.createElement('li');li.textContent=W[i++];"
        "document.getElementById('l').appendChild(li);if(i==W.length)clearInterval(id)},"
        f"{every});"
    )
    events = [
        {
            "start_ms": every * (i + 1),
            "end_ms": every * (i + 1),
            "what": f"the item {item!r} is added to the list",
        }
        for i, item in enumerate(items[1:])
    ]
    return css, [f'<ul id="l"><li>{items[0]}</li></ul>'], script, events, {"colour": name, "items": items}


BUILDERS: dict[str, Callable[..., tuple[list[str], list[str], str, list[dict], dict]]] = {
    "slide": _slide,
    "transition": _transition,
    "progress": _progress,
    "tabs": _tabs,
    "counter": _counter,
    "list": _list,
}


def page_recording(rng: random.Random, scene: str | None = None) -> Recording:
    """One seeded page in motion (scene drawn at random unless named)."""
    w, h = rng.choice(SIZES)
    scene = scene or rng.choice(SCENES)
    title = " ".join(rng.choice(WORDS) for _ in range(2)).title()
    css, body, script, timeline, labels = BUILDERS[scene](rng, w, h)
    code = _page(title, rng.choice(LIGHT), css, body, script)
    return Recording(code, w, h, scene, timeline, {"scene": scene, "title": title, **labels})


def decode_pngs(pngs: list[bytes]) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.open(io.BytesIO(p)).convert("RGB")) for p in pngs])


def build_page_recordings(
    out: str,
    n: int = 200,
    seed: int = 0,
    val_fraction: float = 0.05,
    shard_bytes: int = 256_000,
    progress: bool = True,
) -> dict[str, Any]:
    from tqdm import tqdm

    from kimi_lab.tools.renderers import HtmlRenderer

    rng = random.Random(seed)
    pages = [page_recording(rng, SCENES[i % len(SCENES)]) for i in range(n)]  # every scene, in turn
    sink = ShardSink(out, val_fraction, shard_bytes)
    renderer = ""
    try:
        with HtmlRenderer() as chromium:
            renderer = chromium.version
            for i, page in enumerate(tqdm(pages, desc="page-recordings", unit="clip", disable=not progress)):
                try:
                    frames = decode_pngs(
                        chromium.capture(page.code, page.width, page.height, TIMES_MS).frames
                    )
                except DataError:
                    sink.count("render_failed")
                    continue
                mp4 = encode_mp4(frames, FPS)
                record = make_record(
                    "video",
                    "page-recording-procedural",
                    language="html",
                    renderer=renderer,
                    generator=BUILDER_VERSION,
                    seed=seed,
                    index=i,
                    fps=FPS,
                    times_ms=TIMES_MS,
                    width=page.width,
                    height=page.height,
                    timeline=page.timeline,
                    changes=page.changes,
                    caption=page.caption,
                    labels=page.labels,
                )
                sink.write(
                    {
                        "__key__": sample_key("page-recording", page.code.encode()),
                        "mp4": mp4,
                        "html": page.code.encode(),
                        "json": json.dumps(record).encode(),
                    }
                )
                sink.count(page.scene)
    finally:
        manifest = sink.close(
            "page-recordings",
            "video",
            seed,
            BUILDER_VERSION,
            fps=FPS,
            times_ms=TIMES_MS,
            renderer=renderer,
            source="procedural",
        )
    return manifest
