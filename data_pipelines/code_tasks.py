"""``kimi-lab data build code-from-pixels``: write the code that renders this picture, or plays this recording.

Vision-based coding tasks for SFT, RL and evaluation (K2.5). Each sample is a chat
record (``modality: "chat"``): the prompt (system, then the user with a screenshot
``image_0.png`` or a screen recording ``clip_0.mp4``), and ``task`` with
``answer_type: "image_code"`` and ``answer``: the kind of code (html | svg), the
viewport, the frame times of a recording, the target's structure (elements by tag
and visible text, what the structure reward compares) and the reference code.
A recording's exact target frames ride beside it as ``target_0.png``, ... (the
reward compares renders with them, not with the lossy clip). ``--with-answers``
adds the reference code as the assistant's reply: SFT data. Families:

  html_screenshot   an HTML+CSS page of ``image-code`` (Chromium)
  svg_screenshot    an SVG scene of ``image-code`` (resvg)
  html_recording    a page in motion of ``page-recordings`` (Chromium, virtual clock)

Targets are rendered exactly as ``kimi_lab.tasks.code_rewards`` renders an answer, so
the reference code scores 1. A page that does not render is a counted skip.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from data_pipelines.common import ShardSink
from data_pipelines.image_code import html_page, svg_scene
from data_pipelines.page_recordings import FPS, TIMES_MS, decode_pngs, page_recording
from data_pipelines.video import encode_mp4
from kimi_lab.chat_format import Message
from kimi_lab.data.schema import make_record, sample_key
from kimi_lab.errors import DataError
from kimi_lab.tasks.base import task_seed
from kimi_lab.tools.renderers import HtmlRenderer, PageCapture, render_svg, svg_structure

BUILDER_VERSION = "code-from-pixels/1"
FAMILIES = ("html_screenshot", "svg_screenshot", "html_recording")
SYSTEM_PROMPT = (
    "You turn pictures and screen recordings of web pages and graphics into code. "
    "Reply with the complete code and nothing else."
)


def _ask(family: str, width: int, height: int) -> str:
    if family == "svg_screenshot":
        return f"Write the SVG code of this picture ({width}x{height} pixels)."
    if family == "html_screenshot":
        return f"Write the HTML and CSS of this web page ({width}x{height} pixels)."
    return (
        f"This screen recording shows a web page ({width}x{height} pixels), {len(TIMES_MS)} frames at "
        f"{FPS} frames per second. Write its HTML, CSS and JavaScript, with the motion."
    )


def _png(rgb: Any) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def code_task(
    family: str, seed: int, chromium: HtmlRenderer | None
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """(the task: prompt, answer, reference code; the sample's media files) of one seeded task."""
    rng = random.Random(seed)
    if family == "html_recording":
        page = page_recording(rng)
        code, w, h, kind, times = page.code, page.width, page.height, "html", TIMES_MS
    else:
        prog = html_page(rng) if family == "html_screenshot" else svg_scene(rng)
        code, w, h, kind, times = prog.code, prog.width, prog.height, prog.language, [0]
    if kind == "svg":
        capture = PageCapture([render_svg(code, width=w, height=h)], svg_structure(code))
    else:
        assert chromium is not None
        capture = chromium.capture(code, w, h, times)
    if family == "html_recording":
        frames = decode_pngs(capture.frames)
        files = {"clip_0.mp4": encode_mp4(frames, FPS)}
        files |= {f"target_{i}.png": _png(f) for i, f in enumerate(frames)}
    else:
        files = {"image_0.png": capture.frames[0]}
    task = {
        "id": f"{family}-{seed}",
        "family": family,
        "modality": "image",
        "answer_type": "image_code",
        "answer": {
            "kind": kind,
            "width": w,
            "height": h,
            "times_ms": list(times),
            "structure": capture.structure,
            "code": code,
        },
        "solution_code": "",
        "plan": "",
    }
    return task, files


def build_code_tasks(
    out: str | Path,
    n: int = 200,
    seed: int = 0,
    families: Sequence[str] | None = None,
    with_answers: bool = False,
    val_fraction: float = 0.05,
    shard_bytes: int = 256_000,
    progress: bool = True,
) -> dict[str, Any]:
    from tqdm import tqdm

    chosen = list(families or FAMILIES)
    if unknown := [f for f in chosen if f not in FAMILIES]:
        raise DataError(
            f"unknown code-from-pixels families {', '.join(unknown)}; choose from {', '.join(FAMILIES)}"
        )
    sink = ShardSink(out, val_fraction, shard_bytes)
    renderer = ""
    try:
        with contextlib.ExitStack() as stack:
            chromium = None
            if any(f.startswith("html") for f in chosen):
                chromium = stack.enter_context(HtmlRenderer())
                renderer = chromium.version
            for i in tqdm(range(n), desc="code-from-pixels", unit="task", disable=not progress):
                family = chosen[i % len(chosen)]
                gen_seed = task_seed("code-from-pixels", seed, i)
                try:
                    task, files = code_task(family, gen_seed, chromium)
                except DataError:
                    sink.count("render_failed")
                    continue
                media = "clip_0" if "clip_0.mp4" in files else "image_0"
                messages = [
                    Message("system", SYSTEM_PROMPT),
                    Message(
                        "user",
                        _ask(family, task["answer"]["width"], task["answer"]["height"]),
                        images=[media],
                    ),
                ]
                if with_answers:
                    messages.append(Message("assistant", task["answer"]["code"]))
                record = make_record(
                    "chat",
                    f"code-from-pixels-{family}",
                    generator=BUILDER_VERSION,
                    renderer=renderer if task["answer"]["kind"] == "html" else "resvg",
                    seed=seed,
                    index=i,
                    task_seed=gen_seed,
                )
                record["messages"] = [m.to_dict() for m in messages]
                record["task"] = task
                record["files"] = {}
                content = json.dumps(record, sort_keys=True).encode()
                sink.write({"__key__": sample_key(family, content), "json": content, **files})
                sink.count(family)
    finally:
        manifest = sink.close(
            "code-from-pixels",
            "chat",
            seed,
            BUILDER_VERSION,
            families=chosen,
            with_answers=with_answers,
            renderer=renderer,
        )
    return manifest
