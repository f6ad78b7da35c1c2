"""Rewards: exact answers earn 1, near misses less, garbage 0, and nothing ever raises."""

from __future__ import annotations

import numpy as np
import pytest

from kimi_lab.tasks.base import Task
from kimi_lab.tasks.rewards import (
    count_reward,
    grounding_f1,
    image_code_reward,
    ocr_reward,
    path_reward,
    score,
    shares_reward,
    toggle_length_reward,
)

GARBAGE = [
    None,
    "",
    "   ",
    "x" * 1_000_000,
    "[" * 50_000 + "1, 2, 3, 4" + "]" * 50_000,
    "[[[[1, 2], [3, [4]]]]]",
    "Answer: [[1, 2, 3, 4]",
    "Answer: nan",
    "Answer: 1e999",
    "9" * 5000,
    123,
    b"Answer: 3",
    {"answer": 3},
    ["Answer: 3"],
    "{'red': }",
    "<svg><svg></svg",
]

TRUE_BOXES = [[0, 0, 10, 10], [20, 20, 40, 40]]
TRUE_SHARES = {"red": 40, "blue": 60}
TARGET_SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" width="64" height="48">'
    '<rect width="64" height="48" fill="#ffffff"/><rect x="8" y="8" width="24" height="24" fill="#d62828"/>'
    '<circle cx="48" cy="30" r="10" fill="#1d4e89"/></svg>'
)
WRONG_SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" width="64" height="48">'
    '<rect width="64" height="48" fill="#ffffff"/><circle cx="16" cy="36" r="10" fill="#2a9d8f"/>'
    '<rect x="34" y="4" width="24" height="20" fill="#fcbf49"/></svg>'
)


def _rewards(text: object) -> dict[str, float]:
    """Every correctness reward of ``text`` (not Toggle's length term, which scores length alone)."""
    return {
        "count": count_reward(text, 3),
        "path": path_reward(text, 7),
        "grounding": grounding_f1(text, TRUE_BOXES),
        "shares": shares_reward(text, TRUE_SHARES),
        "ocr": ocr_reward(text, "orbit42"),
        "image_code": image_code_reward(text, np.zeros((8, 8, 3), np.uint8)),
        "score count": score({"answer_type": "count", "answer": 3}, text),
        "score boxes": score({"answer_type": "boxes", "answer": TRUE_BOXES}, text),
        "score shares": score({"answer_type": "shares", "answer": TRUE_SHARES}, text),
        "score text": score({"answer_type": "text", "answer": "orbit42"}, text),
        "score no task": score(None, text),
        "score unknown type": score({"answer_type": "no such type", "answer": 1}, text),
    }


# Garbage that holds a number or letters a graded reward may give partial credit for
# ("1" is 2 away from 3; "nan" shares letters with "orbit42"); the rest holds no answer at all.
PARTLY_READABLE = {5, 6, 7, 8, 14}


@pytest.mark.parametrize("i", range(len(GARBAGE)))
def test_garbage_never_raises_and_scores_zero_unless_it_holds_a_graded_piece(i: int) -> None:
    text = GARBAGE[i]
    rewards = _rewards(text)
    assert all(0.0 <= r < 1.0 for r in rewards.values()), rewards
    assert 0.0 <= toggle_length_reward(text, 100) <= 1.0  # type: ignore[arg-type]
    if i not in PARTLY_READABLE:
        assert rewards == dict.fromkeys(rewards, 0.0)
    else:  # only the graded rewards give partial credit; exact-match and unknown tasks give none
        assert rewards["score no task"] == rewards["score unknown type"] == rewards["image_code"] == 0.0
        assert rewards["path"] == rewards["grounding"] == rewards["shares"] == 0.0


def test_count_is_graded_by_absolute_difference() -> None:
    assert count_reward("3", 3) == 1.0
    assert count_reward("There are 3 red shapes.", 3) == 1.0
    assert count_reward("4", 4) > count_reward("3", 4) == 0.75 > count_reward("1", 4) == 0.25
    assert count_reward("12", 4) == 0.0
    assert count_reward("0", 0) == 1.0 and count_reward("1", 0) == 0.0
    assert count_reward("three", 3) == 0.0


def test_path_length_is_exact() -> None:
    assert path_reward("17", 17) == 1.0
    assert path_reward("18", 17) == 0.0


def test_grounding_f1_matches_boxes_at_iou_half() -> None:
    assert grounding_f1("[[0, 0, 10, 10], [20, 20, 40, 40]]", TRUE_BOXES) == 1.0
    assert grounding_f1("[[20, 20, 40, 40], (10, 10, 0, 0)]", TRUE_BOXES) == 1.0  # order, corners
    assert grounding_f1("[[0, 0, 10, 10]]", TRUE_BOXES) == pytest.approx(2 / 3)  # one of two
    assert grounding_f1("[[0, 0, 10, 10], [50, 50, 60, 60]]", TRUE_BOXES) == pytest.approx(0.5)
    assert grounding_f1("[[1, 0, 11, 10], [20, 20, 40, 40]]", TRUE_BOXES) == 1.0  # IoU 0.82
    assert grounding_f1("[[5, 0, 15, 10], [20, 20, 40, 40]]", TRUE_BOXES) == pytest.approx(0.5)  # IoU 1/3
    assert grounding_f1("[[0, 0, 10, 10], [0, 0, 10, 10]]", [[0, 0, 10, 10]]) == pytest.approx(2 / 3)
    assert grounding_f1("[]", []) == 1.0 and grounding_f1("[[0, 0, 1, 1]]", []) == 0.0


def test_ocr_is_one_minus_normalised_edit_distance() -> None:
    assert ocr_reward("orbit42", "orbit42") == 1.0
    assert ocr_reward("  'Orbit42'. ", "orbit42") == 1.0
    assert ocr_reward("orbit43", "orbit42") == pytest.approx(1 - 1 / 7)
    assert ocr_reward("banana", "orbit42") < 0.3


def test_shares_penalise_the_summed_percent_error() -> None:
    assert shares_reward("{'red': 40, 'blue': 60}", TRUE_SHARES) == 1.0
    assert shares_reward("red 40%, blue 60%", TRUE_SHARES) == 1.0
    assert shares_reward('{"red": 45, "blue": 55}', TRUE_SHARES) == pytest.approx(0.9)
    assert shares_reward("{'red': 100}", TRUE_SHARES) == pytest.approx(0.0)
    assert shares_reward("{'red': 40, 'blue': 50, 'green': 10}", TRUE_SHARES) == pytest.approx(0.8)


def test_toggle_length_reward_is_flat_within_the_budget_then_falls() -> None:
    assert toggle_length_reward(50, 100) == toggle_length_reward(100, 100) == 1.0
    assert toggle_length_reward(150, 100) == pytest.approx(0.5)
    assert toggle_length_reward(200, 100) == toggle_length_reward(10_000, 100) == 0.0


def test_score_dispatches_on_the_answer_type_and_needs_an_answer_line() -> None:
    task = Task("t", "count", "text", "q?", 3, "count", "print(3)")
    assert score(task, "I counted.\nAnswer: 3") == 1.0
    assert score(task.to_record("test"), "Answer: 3") == 1.0
    assert score(task.to_record("test")["task"], "Answer: 4") == pytest.approx(2 / 3)
    assert score(task, "3") == 0.0  # no Answer line
    assert score(task, "Answer: 5\n...\nAnswer: 3") == 1.0  # the last one counts


def test_image_code_reward_compares_renders() -> None:
    from kimi_lab.tools.renderers import render_svg

    target = render_svg(TARGET_SVG)
    assert image_code_reward(f"Here it is:\n```svg\n{TARGET_SVG}\n```", target) == pytest.approx(1.0)
    wrong = image_code_reward(WRONG_SVG, target)
    blank = image_code_reward('<svg xmlns="http://www.w3.org/2000/svg" width="64" height="48"></svg>', target)
    assert wrong < 0.5 and blank < 0.5
    assert image_code_reward("<svg>not closed", target) == 0.0
    task = Task("t", "image_code", "image", "q", {"kind": "svg"}, "image_code", "", images=[target])
    assert score(task, TARGET_SVG) == pytest.approx(1.0)
