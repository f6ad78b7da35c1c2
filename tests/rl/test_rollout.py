"""Episodes: tool calls run between turns, results come back as tool messages, tokens stay exact."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kimi_lab.decode.tool_turns as tool_turns
import kimi_lab.rl.rollout as rollout
from kimi_lab.chat_format import Message
from kimi_lab.config.schema import ToolConfig
from kimi_lab.data.task_prompts import TaskInput
from kimi_lab.data.tokenizer import Tokenizer
from kimi_lab.decode.generation import Generation


@dataclass
class FakeResult:
    stdout: str
    status: str = "ok"
    images: list[tuple[str, bytes]] = field(default_factory=list)

    def observation(self, max_chars: int = 2000) -> str:
        return self.stdout[:max_chars]


def _scripted(tok: Tokenizer, turns: list[str], seen: list[list[int]]) -> Any:
    """A stand-in for ``generate`` that plays fixed assistant turns and records the prompts."""
    im_end = tok.token_id("<|im_end|>")

    def fake_generate(model: Any, prompts: list[Any], *args: Any, **kw: Any) -> list[Generation]:
        out = []
        for p in prompts:
            seen.append(list(p.tokens))
            ids = [*tok.encode(turns[min(len(seen) - 1, len(turns) - 1)]), im_end]
            out.append(Generation(ids, [-0.5] * len(ids), True))
        return out

    return fake_generate


def _task() -> TaskInput:
    return TaskInput(
        [Message("system", "tools: python"), Message("user", "How many red cells?")],
        {"image_0": np.zeros((28, 28, 3), dtype=np.uint8)},
        {"grid.txt": "RRB"},
        {"family": "count", "answer": 2, "answer_type": "count"},
    )


@pytest.fixture
def tok(tiny_tokenizer: Path) -> Tokenizer:
    return Tokenizer(tiny_tokenizer)


def test_tool_call_then_answer(tok: Tokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[int]] = []
    turns = [
        "Count them.<|tool_call_begin|>python\nprint(open('grid.txt').read().count('R'))<|tool_call_end|>",
        "Answer: 2",
    ]
    monkeypatch.setattr(tool_turns, "generate", _scripted(tok, turns, seen))
    calls = []

    def run_tool(code: str, images: Any, files: Any, limits: Any) -> FakeResult:
        calls.append((code, len(images), dict(files)))
        return FakeResult("2\n")

    runner = rollout.RolloutRunner(tok, None, ToolConfig(), 64, 3, 4096, run_tool=run_tool)
    (ep,) = runner.run(None, [_task()], 1)  # type: ignore[arg-type]
    assert calls == [("print(open('grid.txt').read().count('R'))", 1, {"grid.txt": "RRB"})]
    assert [m.role for m in ep.messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert ep.messages[3].content == "2\n" and ep.final_text == "Answer: 2"
    assert ep.turns == 2 and ep.tool_calls == 1 and ep.tool_errors == 0
    # the second turn was sampled after exactly: first prompt + first turn + tool message + header
    assert seen[1][: len(seen[0])] == seen[0]
    assert tok.decode(seen[1][len(seen[0]) :]).endswith(
        "<|tool_result_begin|>2\n<|tool_result_end|><|im_end|><|im_start|><|assistant|>"
    )
    # sampled flags mark exactly the generated tokens, with their log-probs
    assert ep.n_sampled == sum(len(tok.encode(t)) + 1 for t in turns)
    assert all(lp == -0.5 for lp, s in zip(ep.old_logprobs, ep.sampled, strict=True) if s)
    assert len(ep.tokens) == len(ep.sampled) == len(ep.old_logprobs)


def test_malformed_and_unknown_calls_become_error_observations(
    tok: Tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    turns = ["<|tool_call_begin|>shell\nls<|tool_call_end|><|tool_call_begin|>python\nprint(1)", "Answer: 0"]
    monkeypatch.setattr(tool_turns, "generate", _scripted(tok, turns, []))
    runner = rollout.RolloutRunner(
        tok, None, ToolConfig(), 64, 3, 4096, run_tool=lambda *a: FakeResult("never")
    )
    (ep,) = runner.run(None, [_task()], 1)  # type: ignore[arg-type]
    tool_msgs = [m.content for m in ep.messages if m.role == "tool"]
    assert any("cut off" in m for m in tool_msgs) and any("unknown tool 'shell'" in m for m in tool_msgs)
    assert ep.tool_errors == 2 and ep.tool_calls == 0 and ep.final_text == "Answer: 0"


def test_turn_budget_ends_the_episode(tok: Tokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    turns = ["<|tool_call_begin|>python\nprint(1)<|tool_call_end|>"]  # calls the tool forever
    monkeypatch.setattr(tool_turns, "generate", _scripted(tok, turns, []))
    runner = rollout.RolloutRunner(tok, None, ToolConfig(), 64, 2, 4096, run_tool=lambda *a: FakeResult("1"))
    episodes = runner.run(None, [_task()], 3)  # type: ignore[arg-type]
    assert len(episodes) == 3 and all(ep.turns == 2 and ep.tool_calls == 2 for ep in episodes)


def test_tool_calls_of_a_batch_run_side_by_side_and_stay_with_their_episodes(
    tok: Tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    def per_task_turns(model: Any, prompts: list[Any], *a: Any, **kw: Any) -> list[Generation]:
        out = []
        for p in prompts:
            text = tok.decode(p.tokens)
            if "<|tool_result_begin|>" in text:  # second turn: answer with what the tool printed
                seen = text.rsplit("<|tool_result_begin|>", 1)[1].split("<|tool_result_end|>", 1)[0]
                reply = f"Answer: {seen.strip()}"
            else:  # first turn: a program that prints the task's number
                n = text.rsplit("task ", 1)[1].split("?", 1)[0]
                reply = f"<|tool_call_begin|>python\nprint({n})<|tool_call_end|>"
            ids = [*tok.encode(reply), tok.token_id("<|im_end|>")]
            out.append(Generation(ids, [-0.1] * len(ids), True))
        return out

    monkeypatch.setattr(tool_turns, "generate", per_task_turns)
    lock, running, most = threading.Lock(), [0], [0]
    gate = threading.Barrier(3, timeout=5)  # only passes when three calls run at the same time

    def run_tool(code: str, images: Any, files: Any, limits: Any) -> FakeResult:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        gate.wait()
        with lock:
            running[0] -= 1
        return FakeResult(code.removeprefix("print(").removesuffix(")") + "\n")

    tasks = []
    for i in range(6):
        t = _task()
        tasks.append(TaskInput([t.messages[0], Message("user", f"task {i}?")], {}, {}, t.task))
    runner = rollout.RolloutRunner(tok, None, ToolConfig(), 64, 3, 4096, run_tool=run_tool, tool_workers=3)
    episodes = runner.run(None, tasks, 1)  # type: ignore[arg-type]
    assert most[0] == 3  # the barrier would have timed out had the calls run one after another
    assert [ep.final_text for ep in episodes] == [f"Answer: {i}" for i in range(6)]
    assert all(ep.tool_calls == 1 and ep.tool_errors == 0 for ep in episodes)


def _png(size: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), (255, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


def test_saved_images_come_back_and_results_keep_the_calls_order(
    tok: Tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    turns = [
        "<|tool_call_begin|>shell\nls<|tool_call_end|><|tool_call_begin|>python\nplot()<|tool_call_end|>",
        "Answer: 1",
    ]
    monkeypatch.setattr(tool_turns, "generate", _scripted(tok, turns, []))
    saved = [("plot.png", _png(32)), ("speck.png", _png(2))]  # the speck is smaller than a vision patch
    runner = rollout.RolloutRunner(
        tok, None, ToolConfig(), 64, 3, 4096, run_tool=lambda *a: FakeResult("drawn", images=saved)
    )
    runner.turns.tool.min_image_side = 14  # as a -vl model's patch size would set it
    (ep,) = runner.run(None, [_task()], 1)  # type: ignore[arg-type]
    unknown, drawn = [m for m in ep.messages if m.role == "tool"]
    assert "unknown tool 'shell'" in unknown.content and drawn.content == "drawn"
    assert drawn.images == ["tool1_plot"] and ep.images["tool1_plot"].shape == (32, 32, 3)
    # a text-only model reads where the image is
    assert "<image:tool1_plot>" in tok.decode(ep.tokens)
