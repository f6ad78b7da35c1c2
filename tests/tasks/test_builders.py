"""Builders: verified task prompts and SFT trajectories in shards that readers and inspect accept."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kimi_lab.chat_format import Message, conversation_from_list
from kimi_lab.data.shards import iter_shard_samples
from kimi_lab.tasks.base import Task
from kimi_lab.tasks.rewards import score
from tests.conftest import run_cli

REPO = Path(__file__).resolve().parents[2]


def samples(folder: Path) -> list[dict[str, Any]]:
    return list(iter_shard_samples(iter(str(p) for p in sorted(folder.glob("*.tar"))), lambda exn: False))


def test_visual_tasks_are_verified_prompts(task_shards: Path) -> None:
    manifest = json.loads((task_shards / "manifest.json").read_text())
    c = manifest["counts"]
    assert manifest["kind"] == "visual-tasks" and manifest["modality"] == "chat"
    assert c["verified"] == c["train"] + c["val"] == 14 and not c.get("failed")
    got = samples(task_shards)
    assert len(got) == 14
    modalities = set()
    for sample in got:
        record = json.loads(sample["json"])
        messages = [Message.from_dict(m) for m in record["messages"]]
        assert [m.role for m in messages] == ["system", "user"]  # a prompt, for RL to complete
        task = Task.from_sample(sample)
        assert messages[1].images == task.image_names
        assert score(task, f"Answer: {json.dumps(task.answer)}") == 1.0
        modalities.add(task.modality)
        if task.modality == "text":
            assert task.files and not task.images
    assert modalities == {"image", "text"}


def test_rl_reads_the_task_prompts(task_shards: Path) -> None:
    from kimi_lab.data.task_prompts import task_from_sample

    for sample in samples(task_shards):
        prompt = task_from_sample(sample, "tasks")
        assert set(prompt.images) == {m for msg in prompt.messages for m in msg.images}
        assert prompt.task["answer_type"] and prompt.files == json.loads(sample["json"])["files"]


def test_zero_vision_sft_trajectories_round_trip(sft_shards: Path) -> None:
    manifest = json.loads((sft_shards / "manifest.json").read_text())
    assert manifest["counts"]["verified"] == 10 and manifest["counts"]["image_traces"] == 3
    for sample in samples(sft_shards):
        record = json.loads(sample["json"])
        messages = conversation_from_list(record["messages"])
        assert [m.role for m in messages] == ["system", "user", "assistant", "tool", "assistant"]
        task = Task.from_sample(sample)
        assert messages[2].tool_calls[0].input == task.solution_code
        assert score(record, messages[-1].content) == 1.0
        assert messages[1].images == task.image_names == [k[:-4] for k in sample if k.endswith(".png")]
        assert (task.modality == "image") == bool(task.images)


def test_cli_builds_task_shards(sandbox: None, tmp_path: Path) -> None:
    out = tmp_path / "tasks"
    args = ["--out", str(out), "--n", "4", "--families", "count,maze", "--modality", "text"]
    built = run_cli("data", "build", "visual-tasks", *args, cwd=REPO)
    assert built.returncode == 0, built.stderr
    assert "visual-tasks shards" in built.stdout and "verified 4" in built.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["families"] == {"image": [], "text": ["count", "maze"]}


@pytest.mark.parametrize("shards", ["task_shards", "sft_shards"])
def test_inspect_reads_chat_shards(shards: str, request: pytest.FixtureRequest) -> None:
    folder = request.getfixturevalue(shards)
    report = run_cli("data", "inspect", str(folder), "--json", cwd=REPO)
    assert report.returncode == 0, report.stderr
    totals = json.loads(report.stdout)["totals"]
    manifest = json.loads((folder / "manifest.json").read_text())
    n = manifest["counts"]["train"] + manifest["counts"]["val"]
    assert totals["samples"] == n and totals["modalities"] == {"chat": n}
    assert not any(totals["failures"].values())
    previews = json.loads(report.stdout)["previews"]
    assert previews and any("user" in part for part in previews[0]["parts"])


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    bad = run_cli(
        "data", "build", "visual-tasks", "--out", str(tmp_path), "--families", "count,nope", cwd=REPO
    )
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0
    assert "nope" in bad.stderr and "count, grounding" in bad.stderr
