"""Scoring episodes and evaluating a model on task prompts (greedy, one sample each, batched)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch

from kimi_lab.data.task_prompts import TaskInput
from kimi_lab.errors import KimiLabError
from kimi_lab.metrics import EVAL_FAMILY, EVAL_SOURCE
from kimi_lab.rl.rollout import Episode, RolloutRunner

CORRECT = 0.999  # a reward at or above this counts as a correct answer


def score_episode(ep: Episode) -> float:
    from kimi_lab.tasks.rewards import score

    # A code-from-pixels answer is compared with the task's target frames, else its images.
    targets = ep.task.targets or [a for a in ep.task.images.values() if a.ndim == 3]
    return float(score(ep.task.task, ep.final_text, targets))


def summarize(episodes: list[Episode], rewards: list[float]) -> dict[str, Any]:
    """Mean reward and accuracy overall, per source and per task family, plus tool use."""
    groups: dict[str, list[float]] = defaultdict(list)
    for ep, r in zip(episodes, rewards, strict=True):
        groups["all"].append(r)
        groups[EVAL_SOURCE.format(source=ep.task.source)].append(r)
        groups[EVAL_FAMILY.format(family=ep.task.task.get("family", "?"))].append(r)
    out: dict[str, Any] = {}
    for name, rs in sorted(groups.items()):
        out[name] = {
            "n": len(rs),
            "reward": sum(rs) / len(rs),
            "accuracy": sum(r >= CORRECT for r in rs) / len(rs),
        }
    n = max(1, len(episodes))
    out["tool_calls_per_episode"] = sum(ep.tool_calls for ep in episodes) / n
    out["tool_error_rate"] = sum(ep.tool_errors for ep in episodes) / max(
        1, sum(ep.tool_calls for ep in episodes)
    )
    out["response_tokens"] = sum(ep.n_sampled for ep in episodes) / n
    return out


def prompt_size(task: TaskInput) -> int:
    """About how many tokens a task's prompt takes (3 characters a token, 28 x 28 pixels per
    merged vision token): enough to put prompts of similar length in one batch."""
    chars = sum(len(m.content) for m in task.messages)
    # a clip costs one frame's tokens per chunk of 4 frames
    pixels = sum(
        int(a.shape[-3]) * int(a.shape[-2]) * (-(-a.shape[0] // 4) if a.ndim == 4 else 1)
        for a in task.images.values()
    )
    return chars // 3 + pixels // 784


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    runner: RolloutRunner,
    tasks: list[TaskInput],
    batch_size: int = 64,
    progress: Callable[[int, int], None] | None = None,
    scorer: Callable[[Episode], float] = score_episode,
) -> tuple[dict[str, Any], list[Episode], list[float]]:
    """Greedy episodes of ``tasks`` in batches of ``batch_size``; episodes come back in the tasks' order.

    Prompts are batched by length: a batch pads to its longest prompt and decodes until its
    last episode stops, so like with like wastes the least. ``progress(done, total)`` after
    each batch. ``scorer`` rewards an episode (one that also keeps what it rendered, say).
    """
    order = sorted(range(len(tasks)), key=lambda i: prompt_size(tasks[i]))
    by_task: dict[int, Episode] = {}
    for start in range(0, len(order), max(1, batch_size)):
        idx = order[start : start + max(1, batch_size)]
        for i, ep in zip(idx, runner.run(model, [tasks[i] for i in idx], 1, temperature=0.0), strict=True):
            by_task[i] = ep
        if progress is not None:
            progress(len(by_task), len(tasks))
    episodes = [by_task[i] for i in range(len(tasks))]
    rewards = [scorer(ep) for ep in episodes]
    return summarize(episodes, rewards), episodes, rewards


def blanked(task: TaskInput) -> TaskInput:
    """The task with every image replaced by its most common colour (its background), same size:
    a control that keeps the prompt and the answer format but removes what there is to see."""
    import numpy as np

    images = {}
    for name, rgb in task.images.items():
        colours, counts = np.unique(rgb.reshape(-1, rgb.shape[-1]), axis=0, return_counts=True)
        images[name] = np.broadcast_to(colours[counts.argmax()], rgb.shape).copy()
    return TaskInput(task.messages, images, task.files, task.task, task.source, task.targets)


def episode_record(ep: Episode, reward: float) -> dict[str, Any]:
    """One line per prompt in an evaluation's result: what paired comparisons of two models need."""
    return {
        "id": str(ep.task.task.get("id")),
        "source": ep.task.source,
        "family": ep.task.task.get("family"),
        "reward": reward,
        "tool_calls": ep.tool_calls,
        "tool_errors": ep.tool_errors,
        "sampled_tokens": ep.n_sampled,
        "truncated": ep.truncated,
    }


def load_policy(
    ckpt_path: str, max_new_tokens: int | None = None, max_turns: int | None = None
) -> tuple[Any, torch.nn.Module, RolloutRunner]:
    """(run config, model in eval mode, a rollout runner) from a kimi_lab checkpoint; the
    episode budgets default to the checkpoint's ``phase.rl`` settings."""
    from kimi_lab.decode.loading import load_model

    loaded = load_model(ckpt_path)
    cfg, model, tok = loaded.config, loaded.model, loaded.tokenizer
    assert tok is not None
    rl = cfg.phase.rl
    runner = RolloutRunner(
        tok,
        cfg.data.vision if model.has_vision else None,
        rl.tool,
        max_new_tokens or rl.max_new_tokens,
        max_turns or rl.max_turns,
        cfg.model.max_seq_len,
    )
    return cfg, model, runner


def evaluate_checkpoint(
    ckpt_path: str,
    task_dirs: dict[str, str],
    n: int,
    batch_size: int = 64,
    max_new_tokens: int | None = None,
    max_turns: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    require_n: bool = False,
    blank_images: bool = False,
) -> dict[str, Any]:
    """Greedy evaluation of a checkpoint on the first ``n`` val prompts of each task folder.

    ``require_n``: a folder with fewer than ``n`` val prompts is an error (an experiment whose
    statistics were sized for ``n``), not a smaller sample. ``blank_images``: every image
    replaced by its background colour (see ``blanked``).
    """
    from kimi_lab.data.task_prompts import EvalTasks, task_urls

    tasks: list[TaskInput] = []
    for name, path in task_dirs.items():
        got = list(EvalTasks(name, task_urls(name, path, "val"), n))
        if require_n and len(got) < n:
            raise KimiLabError(
                f"{path}: {len(got)} usable val prompts, {n} needed; rebuild it with more tasks "
                f"(kimi-lab data build visual-tasks --n ...) or remove it so it is rebuilt"
            )
        tasks.extend([blanked(t) for t in got] if blank_images else got)
    _, model, runner = load_policy(ckpt_path, max_new_tokens, max_turns)
    summary, episodes, rewards = evaluate(model, runner, tasks, batch_size, progress)
    examples = [
        {
            "source": ep.task.source,
            "family": ep.task.task.get("family"),
            "answer": ep.task.task.get("answer"),
            "reward": r,
            "transcript": [m.to_dict() for m in ep.messages[1:]],
        }
        for ep, r in list(zip(episodes, rewards, strict=True))[:6]
    ]
    return {
        "checkpoint": str(ckpt_path),
        "summary": summary,
        "examples": examples,
        "episodes": [episode_record(ep, r) for ep, r in zip(episodes, rewards, strict=True)],
    }
