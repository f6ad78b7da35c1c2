"""Run a task's reference program in the sandbox, check it, and make it an SFT trajectory.

The tool message of a trajectory is the sandbox's real observation, and a
trajectory exists only when the program's printed answer scores 1.0 against the
ground truth: a model trained on these never sees a tool output that lies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kimi_lab.chat_format import Message, ToolCall
from kimi_lab.errors import DataError, one_line
from kimi_lab.tasks.base import SYSTEM_PROMPT, Task
from kimi_lab.tasks.rewards import score


def run_code(
    code: str, images: Sequence[Any] = (), files: dict[str, str] | None = None, limits: Any = None
) -> Any:
    """``kimi_lab.tools.run_python``, with a one-line ``DataError`` when no sandbox can run here."""
    try:
        from kimi_lab.tools import SandboxLimits, SandboxUnavailable, run_python
    except ImportError as exn:
        raise DataError(f"the code sandbox (kimi_lab.tools) is unavailable: {exn}") from None
    try:
        return run_python(code, images=images, files=files or {}, limits=limits or SandboxLimits())
    except SandboxUnavailable as exn:  # no bubblewrap, no user namespaces, ...
        raise DataError(f"the code sandbox cannot run here: {one_line(exn)}") from None


def check_sandbox() -> None:
    """Fail early (before a builder clears its output folder) when the sandbox cannot run."""
    result = run_code("print('ok')")
    if result.status != "ok":
        raise DataError(f"the code sandbox does not run a trivial program: {failure(result)}")


def run_reference(task: Task, limits: Any = None) -> Any:
    """The sandbox's ``ToolResult`` for the task's reference program."""
    return run_code(task.solution_code, task.images, task.files, limits)


def printed_answer(result: Any) -> str | None:
    """The last line the program printed, if it ran to the end."""
    if result.status != "ok":
        return None
    lines = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    return lines[-1] if lines else None


def verified_answer(task: Task, result: Any) -> str | None:
    """The printed answer when it scores 1.0 against the ground truth, else None."""
    answer = printed_answer(result)
    if answer is None or score(task, f"Answer: {answer}") < 1.0:
        return None
    return answer


def failure(result: Any) -> str:
    """Why a run did not verify, in one line (for logs and the manifest)."""
    if result.status != "ok":
        lines = str(result.error or "").strip().splitlines()
        return f"{result.status}: {lines[-1] if lines else 'no error message'}"
    return f"wrong answer: {printed_answer(result)!r}"


def trajectory(task: Task, result: Any, system_prompt: str = SYSTEM_PROMPT) -> list[Message] | None:
    """prompt -> plan + python call -> real tool output -> ``Answer: ...``; None if unverified."""
    answer = verified_answer(task, result)
    if answer is None:
        return None
    return [
        *task.messages(system_prompt),
        Message("assistant", task.plan, [ToolCall("python", task.solution_code)]),
        Message("tool", result.observation()),
        Message("assistant", f"Answer: {answer}"),
    ]
