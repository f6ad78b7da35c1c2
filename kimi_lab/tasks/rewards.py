"""Verifiable rewards in [0, 1] for what a policy writes (K2.5 outcome-based visual RL).

A policy writes anything: every reward parses leniently, caps the work it does on
huge inputs, and returns 0.0 instead of raising (``_safe``), so one garbage sample
cannot stop an RL step. ``score`` picks the reward from a task's ``answer_type``
and reads the final ``Answer: ...`` line (image-code tasks read the code itself).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from kimi_lab.chat_format import extract_answer
from kimi_lab.tools.render_worker import RenderUnavailable

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_N = r"\s*(-?\d+(?:\.\d+)?)\s*"
_BOX = re.compile(rf"[\[(]{_N},{_N},{_N},{_N}[\])]")
_SHARE = re.compile(r"(?<![A-Za-z])([A-Za-z]+)['\"]?\s*[:=]?\s*(-?\d+(?:\.\d+)?)\s*%?")
MAX_CHARS = 20_000  # more than any right answer needs; bounds regex and edit-distance work
MAX_BOXES = 64


def _safe(fn: Callable[..., float]) -> Callable[..., float]:
    """Rewards never raise and never leave [0, 1]: a malformed output simply earns 0. The one
    exception: a machine where the sandboxed renderer cannot start at all says so."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> float:
        try:
            value = float(fn(*args, **kwargs))
        except RenderUnavailable:
            raise
        except Exception:  # the policy's text can break any parser; that is a zero, not a crash
            return 0.0
        return min(1.0, max(0.0, value)) if math.isfinite(value) else 0.0

    return wrapper


def _text(pred: Any) -> str:
    return pred[:MAX_CHARS] if isinstance(pred, str) else ""


def _first_number(pred: Any) -> float | None:
    m = _NUMBER.search(_text(pred))
    return float(m.group()) if m else None


@_safe
def count_reward(pred_text: Any, true_int: int) -> float:
    """max(0, 1 - |p - t| / max(1, t)) for the first number written; 0 if there is none."""
    p = _first_number(pred_text)
    if p is None:
        return 0.0
    return 1.0 - abs(p - true_int) / max(1, abs(true_int))


@_safe
def path_reward(pred_text: Any, true_len: int) -> float:
    """1 for the exact shortest-path length, else 0: a path one move longer is a different path."""
    p = _first_number(pred_text)
    return float(p is not None and p == true_len)


def parse_boxes(pred: Any) -> list[tuple[float, float, float, float]]:
    """Every ``[x0, y0, x1, y1]`` (or parenthesised) quadruple, corners ordered, at most MAX_BOXES."""
    boxes = []
    for m in _BOX.finditer(_text(pred)):
        x0, y0, x1, y1 = (float(v) for v in m.groups())
        boxes.append((min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))
        if len(boxes) == MAX_BOXES:
            break
    return boxes


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@_safe
def grounding_f1(pred_text: Any, true_boxes: Sequence[Sequence[float]], iou_threshold: float = 0.5) -> float:
    """F1 of predicted vs true boxes, matched greedily by IoU (pairs with IoU >= threshold).

    Greedy in decreasing IoU equals the optimal matching whenever boxes are as
    separated as ours; empty truth and empty prediction agree perfectly.
    """
    pred = parse_boxes(pred_text)
    true = [tuple(float(v) for v in b) for b in true_boxes]
    if not pred or not true:
        return float(not pred and not true)
    pairs = sorted(
        ((iou(p, t), i, j) for i, p in enumerate(pred) for j, t in enumerate(true)),
        reverse=True,
    )
    used_p, used_t = set(), set()
    for value, i, j in pairs:
        if value < iou_threshold:
            break
        if i not in used_p and j not in used_t:
            used_p.add(i)
            used_t.add(j)
    return 2 * len(used_p) / (len(pred) + len(true))


def levenshtein(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def _normalise(text: str) -> str:
    return " ".join(text.lower().split()).strip("\"'`.")


@_safe
def ocr_reward(pred: Any, true: str) -> float:
    """1 - edit distance / longer length, on lower-cased, space-collapsed text without quotes."""
    t = _normalise(true)
    # A prediction far longer than the truth scores ~0 anyway: cut it before the O(n*m) distance.
    p = _normalise(_text(pred))[: 2 * len(t) + 16]
    if not p and not t:
        return 1.0
    return 1.0 - levenshtein(p, t) / max(len(p), len(t))


def parse_shares(pred: Any) -> dict[str, float]:
    return {name.lower(): float(v) for name, v in _SHARE.findall(_text(pred))}


@_safe
def shares_reward(pred_text: Any, true_shares: dict[str, float]) -> float:
    """max(0, 1 - sum over colours of |predicted - true percent| / 100).

    The sum runs over every colour either side names (a missing colour counts as 0%),
    so all-wrong shares of two distributions summing to 100 reach 0 at 50 points of
    total-variation distance.
    """
    pred = parse_shares(pred_text)
    if not pred:
        return 0.0
    true = {k.lower(): float(v) for k, v in true_shares.items()}
    error = sum(abs(pred.get(k, 0.0) - true.get(k, 0.0)) for k in set(pred) | set(true))
    return 1.0 - error / 100.0


@_safe
def image_code_reward(
    code_text: Any,
    target: bytes | np.ndarray | Sequence[bytes | np.ndarray],
    answer: Mapping[str, Any] | str = "svg",
    renderer: Any = None,
) -> float:
    """Render the program the text holds and compare it with the target: one picture, or a recording's
    frames at ``answer["times_ms"]`` (``kimi_lab.tasks.code_rewards``); 0 if it does not render.

    ``answer``: the task's answer (kind, times, the target's structure) or just the kind, svg | html.
    """
    from kimi_lab.tasks.code_rewards import code_score

    frames = [target] if isinstance(target, bytes | np.ndarray) else list(target)
    spec = {"kind": answer} if isinstance(answer, str) else answer
    return code_score(code_text, frames, spec, renderer).reward


@_safe
def toggle_length_reward(length: int, budget: float) -> float:
    """K2.5 Toggle's length term: r = 1 if L <= B, else max(0, 1 - (L - B) / B).

    L is the response length in tokens and B the rho-th percentile of the lengths of
    the prompt's correct responses; the reward falls linearly to 0 at twice the
    budget. The RL phase (``kimi_lab.rl.loss.Toggle``) computes B and adds this term
    only in budget phases, and only while mean accuracy > lambda.
    """
    if budget <= 0:
        return float(length <= 0)
    return 1.0 - max(0.0, length - budget) / budget


@_safe
def score(task: Any, final_text: Any, targets: Sequence[np.ndarray] = ()) -> float:
    """The reward of a final assistant text for a ``Task`` (or a shard record, or its ``task`` dict).

    Image-code tasks need the target: ``targets`` (a picture, or a recording's frames), or a
    ``Task`` whose ``images[0]`` it is.
    """
    from kimi_lab.tasks.base import Task

    if isinstance(task, Task):
        answer_type, answer, images = task.answer_type, task.answer, task.images
    else:
        t = task.get("task", task)
        answer_type, answer, images = t["answer_type"], t["answer"], []
    text = final_text[-MAX_CHARS:] if isinstance(final_text, str) else ""  # the answer comes last
    if answer_type == "image_code":
        frames = list(targets) or images[:1]
        return image_code_reward(text, frames, answer) if frames else 0.0
    pred = extract_answer(text)
    if pred is None:
        return 0.0
    if answer_type == "count":
        return count_reward(pred, answer)
    if answer_type == "path_length":
        return path_reward(pred, answer)
    if answer_type == "boxes":
        return grounding_f1(pred, answer)
    if answer_type == "shares":
        return shares_reward(pred, answer)
    if answer_type == "text":
        return ocr_reward(pred, answer)
    return 0.0
