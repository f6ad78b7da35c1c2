"""``kimi-lab data build interleaved``: documents with images inline, in reading order.

The prose is real (paragraphs of pydoc's topic pages, on every machine); the
figures are rendered SVG charts and diagrams, each followed by a caption that
describes what the figure shows, so text and image are really about each other.
A sample holds the record (``segments``: ``{"text": ...}`` and ``{"image": ext}``
in order) and one ``imgN.png`` per figure.
"""

from __future__ import annotations

import json
import random
from typing import Any

from data_pipelines.common import ShardSink
from data_pipelines.image_code import svg_scene
from kimi_lab.data.corpus import stdlib_documents
from kimi_lab.data.schema import make_record, sample_key
from kimi_lab.tools.renderers import render_svg, resvg_version

BUILDER_VERSION = "interleaved/1"


def describe(labels: dict[str, Any]) -> str:
    """A caption that says what the figure shows (from the scene's exact labels)."""
    scene = labels["scene"]
    if scene == "bar_chart":
        return f"a bar chart titled {labels['title']!r} with values {', '.join(map(str, labels['values']))}"
    if scene == "pie_chart":
        parts = [f"{s['colour']} {round(100 * s['share'])}%" for s in labels["slices"]]
        return f"a pie chart with slices {', '.join(parts)}"
    if scene == "diagram":
        return f"a diagram of {len(labels['boxes'])} connected boxes: {' -> '.join(labels['boxes'])}"
    shapes = [f"a {s['colour']} {s['shape']}" for s in labels["shapes"]]
    return f"{len(shapes)} shapes: {', '.join(shapes)}"


def paragraphs() -> list[str]:
    paras = []
    for doc in stdlib_documents():
        if doc.source != "python-docs":
            continue
        paras += [p.strip() for p in doc.text.split("\n\n") if 80 <= len(p.strip()) <= 1200]
    return paras


def build_interleaved(
    out: str,
    n: int = 200,
    seed: int = 0,
    val_fraction: float = 0.05,
    shard_bytes: int = 256_000,
    progress: bool = True,
) -> dict[str, Any]:
    from tqdm import tqdm

    rng = random.Random(seed)
    paras = paragraphs()
    sink = ShardSink(out, val_fraction, shard_bytes)
    try:
        for i in tqdm(range(n), desc="interleaved", unit="doc", disable=not progress):
            start = rng.randrange(len(paras))
            texts = paras[start : start + rng.randint(2, 4)]
            n_figures = rng.randint(1, 2)
            sample: dict[str, Any] = {}
            segments: list[dict[str, str]] = []
            figures = []
            for j, text in enumerate(texts):
                segments.append({"text": text + "\n"})
                if j < n_figures:
                    scene = svg_scene(rng)
                    sample[f"img{j}.png"] = render_svg(scene.code)
                    segments.append({"image": f"img{j}.png"})
                    segments.append({"text": f"Figure {j + 1}: {describe(scene.labels)}.\n"})
                    figures.append(scene.labels)
            content = json.dumps(segments).encode()
            record = make_record(
                "interleaved",
                "pydoc+svg",
                generator=BUILDER_VERSION,
                renderer=resvg_version(),
                seed=seed,
                index=i,
                figures=figures,
                license="PSF-2.0 (text)",
            )
            record["segments"] = segments
            sample.update(
                {"__key__": sample_key("interleaved", content), "json": json.dumps(record).encode()}
            )
            sink.write(sample)
    finally:
        manifest = sink.close(
            "interleaved", "interleaved", seed, BUILDER_VERSION, source="pydoc topics + procedural SVG"
        )
    return manifest
