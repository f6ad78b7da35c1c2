"""Code-from-pixels rewards: render the policy's SVG / HTML as the target was rendered, and compare.

A screenshot task's target is one picture; a recording's is its frames at the task's times
(``answer["times_ms"]``), and the answer's page is recorded at the same times on the same
virtual clock (``kimi_lab.tools.renderers``). The reward is

    (1 - STRUCTURE_WEIGHT) * mean over frames of the visual similarity
    + STRUCTURE_WEIGHT * structure similarity (the elements and the text the target shows),

the second term where the task carries the target's structure (``answer["structure"]``), else
the visual term alone. Rendering runs in ``render_worker`` (sandboxed, killable, bounded in time
and memory): an answer without a complete document, or one that does not render within those
bounds, scores 0 and the next answer renders as usual.
"""

from __future__ import annotations

import atexit
import functools
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kimi_lab.tools.renderers import PageCapture

STRUCTURE_WEIGHT = 0.25
_CODE = {
    "svg": re.compile(r"<svg\b.*?</svg>", re.S | re.I),
    "html": re.compile(r"(?:<!doctype html.*?|<html\b.*?)</html>", re.S | re.I),
}
_WORD = re.compile(r"\w+")


def extract_code(text: str, kind: str) -> str | None:
    """The last complete SVG / HTML document in the text (fences and prose around it ignored)."""
    found = _CODE[kind].findall(text)
    return found[-1] if found else None


def _rgb(png: bytes | np.ndarray) -> np.ndarray:
    if isinstance(png, np.ndarray):
        return png[..., :3].astype(np.float32)
    from kimi_lab.data.decode import decode_image

    return decode_image(png).astype(np.float32)


def background(rgb: np.ndarray) -> np.ndarray:
    """The most common colour of a picture (its background, for the pages and scenes here)."""
    packed = rgb.astype(np.uint32) @ np.array([1 << 16, 1 << 8, 1], np.uint32)
    values, counts = np.unique(packed.ravel(), return_counts=True)
    v = int(values[counts.argmax()])
    return np.array([v >> 16, (v >> 8) & 255, v & 255], np.float32)


def image_similarity(pred: bytes | np.ndarray, target: bytes | np.ndarray) -> float:
    """1 - mean |pred - target| / mean |flat - target|, pred resized to the target's size.

    ``flat`` is the target's background (most common) colour filling the canvas: relative to
    it, an empty page (or any picture no closer than that fill) earns 0, however much of the
    target is background.
    """
    from PIL import Image

    t = _rgb(target)
    p = _rgb(pred)
    if p.shape != t.shape:
        p = np.asarray(
            Image.fromarray(p.astype(np.uint8)).resize((t.shape[1], t.shape[0]), Image.Resampling.BILINEAR),
            np.float32,
        )
    diff = float(np.abs(p - t).mean())
    flat = float(np.abs(t - background(t)).mean())
    return 1.0 - diff / max(flat, 1.0)


def _f1(pred: Counter, true: Counter) -> float:
    if not pred and not true:
        return 1.0
    common = sum((pred & true).values())
    return 2 * common / (sum(pred.values()) + sum(true.values()))


def structure_similarity(pred: Mapping[str, Any], true: Mapping[str, Any]) -> float:
    """Mean of the F1 of element counts by tag and the F1 of the visible words (when the target has
    any): what the target shows, neither missing nor padded."""
    tags = _f1(Counter(dict(pred.get("tags") or {})), Counter(dict(true.get("tags") or {})))
    true_words = Counter(_WORD.findall(str(true.get("text", "")).lower()))
    if not true_words:
        return tags
    words = _f1(Counter(_WORD.findall(str(pred.get("text", ""))[:20_000].lower())), true_words)
    return (tags + words) / 2


@dataclass
class CodeScore:
    reward: float
    rendered: bool  # a complete document that rendered within the limits
    visual: float = 0.0
    structure: float | None = None
    capture: PageCapture | None = field(default=None, repr=False)  # the answer's render, for reports


@functools.cache
def shared_renderer() -> Any:
    """One sandboxed render process for this process's rewards (started on first use)."""
    from kimi_lab.tools.render_worker import PageRenderer

    renderer = PageRenderer()
    atexit.register(renderer.close)
    return renderer


def code_score(
    text: Any, targets: Sequence[bytes | np.ndarray], answer: Mapping[str, Any], renderer: Any = None
) -> CodeScore:
    """Score the last SVG / HTML document of ``text`` against the target frames (see the module doc).

    ``answer``: ``kind`` (svg | html), ``times_ms`` (a recording's frame times; default one frame at
    0), ``structure`` (the target's, optional). ``renderer``: a ``PageRenderer`` (default: shared).
    Raises only ``RenderUnavailable`` (the sandbox cannot start here).
    """
    kind = answer.get("kind", "svg")
    times = list(answer.get("times_ms") or [0])
    code = extract_code(text[-50_000:], kind) if isinstance(text, str) and kind in _CODE else None
    if code is None or not targets or len(targets) != len(times):
        return CodeScore(0.0, False)
    frames = [_rgb(t) for t in targets]
    h, w = frames[0].shape[:2]
    got = (renderer or shared_renderer()).render(kind, code, w, h, times)
    if got is None or len(got.frames) != len(frames):
        return CodeScore(0.0, False)
    visual = float(np.mean([max(0.0, image_similarity(p, t)) for p, t in zip(got.frames, frames)]))
    true = answer.get("structure")
    if not isinstance(true, Mapping):
        return CodeScore(min(1.0, visual), True, visual, None, got)
    structure = structure_similarity(got.structure, true)
    reward = (1 - STRUCTURE_WEIGHT) * visual + STRUCTURE_WEIGHT * structure
    return CodeScore(min(1.0, max(0.0, reward)), True, visual, structure, got)
