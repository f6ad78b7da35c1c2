"""Task generators: reference programs reproduce the ground truth, twins share their solver."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from kimi_lab.chat_format import conversation_from_list, extract_answer
from kimi_lab.tasks.base import Task
from kimi_lab.tasks.programs import split_program
from kimi_lab.tasks.rewards import score
from kimi_lab.tasks.text_twins import FAMILIES as TEXT_FAMILIES
from kimi_lab.tasks.text_twins import sft_traces, text_task
from kimi_lab.tasks.visual import CELL, FAMILIES, image_task

SEEDS = (0, 1, 2)
ANSWER_TYPES = {
    "count": "count",
    "grounding": "boxes",
    "maze": "path_length",
    "shares": "shares",
    "diff": "count",
    "ocr": "text",
}


@pytest.fixture(scope="module")
def run_reference(sandbox: None):
    from kimi_lab.tasks.solve import run_reference

    return run_reference


CASES = [(f, "image") for f in FAMILIES] + [(f, "text") for f in TEXT_FAMILIES]


@pytest.mark.parametrize(("family", "modality"), CASES)
def test_reference_programs_reproduce_the_ground_truth_in_the_sandbox(
    family, modality, run_reference
) -> None:
    from kimi_lab.tasks.solve import printed_answer

    for seed in SEEDS:
        task = image_task(family, seed) if modality == "image" else text_task(family, seed)
        result = run_reference(task)
        assert result.status == "ok", (task.id, result.error)
        assert score(task, f"Answer: {printed_answer(result)}") == 1.0, (task.id, result.stdout, task.answer)


@pytest.mark.parametrize("family", FAMILIES)
def test_tasks_are_seeded_and_typed(family: str) -> None:
    a, b, c = image_task(family, 7), image_task(family, 7), image_task(family, 8)
    assert a.question == b.question and a.answer == b.answer
    assert all(np.array_equal(x, y) for x, y in zip(a.images, b.images))
    assert (a.answer, [x.tobytes() for x in a.images]) != (c.answer, [x.tobytes() for x in c.images])
    assert a.answer_type == ANSWER_TYPES[family] and json.loads(json.dumps(a.answer)) == a.answer
    assert all(im.dtype == np.uint8 and im.ndim == 3 and im.shape[2] == 3 for im in a.images)


@pytest.mark.parametrize("family", TEXT_FAMILIES)
def test_text_and_image_twins_share_the_solver(family: str) -> None:
    for seed in SEEDS:
        text, image = text_task(family, seed), image_task(family, seed)
        text_read, text_solve = split_program(text.solution_code)
        image_read, image_solve = split_program(image.solution_code)
        assert text_solve and text_solve == image_solve  # only the reading step differs
        assert "grid_" in text_read and "LEGEND" in image_read
        if family != "shares":  # same scene: the text grid is the image's cells, one symbol each
            first = text.files["grid_0.txt"].split()
            assert image.images[0].shape[:2] == (len(first) * CELL, len(first[0]) * CELL)


def test_grounding_answers_are_in_pixels_for_images_and_cells_for_text() -> None:
    text, image = text_task("grounding", 3), image_task("grounding", 3)
    assert image.answer == [[v * CELL for v in box] for box in text.answer]


def test_records_round_trip_to_tasks_and_prompts() -> None:
    for task in (image_task("diff", 4), text_task("maze", 4)):
        record = json.loads(json.dumps(task.to_record("test", generator="t")))
        assert record["modality"] == "chat" and record["task"]["answer"] == task.answer
        back = Task.from_record(record, task.images)
        same = [f.name for f in dataclasses.fields(Task) if f.name != "images"]
        assert all(getattr(back, name) == getattr(task, name) for name in same)
        sample = {"json": json.dumps(record).encode(), **task.image_pngs()}
        again = Task.from_sample(sample)
        assert all(np.array_equal(x, y) for x, y in zip(again.images, task.images))
        assert len(again.images) == len(task.images) and again.files == task.files
        prompt = task.messages()
        assert [m.role for m in prompt] == ["system", "user"]
        assert prompt[1].images == [f"image_{i}" for i in range(len(task.images))]


def test_sft_trajectories_hold_the_real_tool_output(run_reference) -> None:
    traces = list(sft_traces(5, seed=0, with_visual_traces=True, visual_fraction=0.4))
    assert [t.task.modality for t in traces].count("image") == 2
    for trace in traces:
        assert trace.messages is not None, trace.error
        messages = conversation_from_list([m.to_dict() for m in trace.messages])
        assert [m.role for m in messages] == ["system", "user", "assistant", "tool", "assistant"]
        call = messages[2].tool_calls[0]
        assert call.name == "python" and call.input == trace.task.solution_code
        assert messages[2].content  # a plan sentence before the call
        answer = extract_answer(messages[4].content)
        assert answer is not None and answer in messages[3].content  # the answer is what the tool printed
        assert score(trace.task, messages[4].content) == 1.0
    assert all(t.task.modality == "text" for t in sft_traces(3, seed=1))
