"""Scoring episodes and evaluating a model on task prompts (greedy, one sample each)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch

from kimi_lab.data.tasks import TaskInput
from kimi_lab.rl.rollout import Episode, RolloutRunner

CORRECT = 0.999  # a reward at or above this counts as a correct answer


def score_episode(ep: Episode) -> float:
    from kimi_lab.tasks.rewards import score

    return float(score(ep.task.task, ep.final_text))


def summarize(episodes: list[Episode], rewards: list[float]) -> dict[str, Any]:
    """Mean reward and accuracy overall, per source and per task family, plus tool use."""
    groups: dict[str, list[float]] = defaultdict(list)
    for ep, r in zip(episodes, rewards, strict=True):
        groups["all"].append(r)
        groups[f"source/{ep.task.source}"].append(r)
        groups[f"family/{ep.task.task.get('family', '?')}"].append(r)
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


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, runner: RolloutRunner, tasks: list[TaskInput], batch_size: int = 8
) -> tuple[dict[str, Any], list[Episode], list[float]]:
    episodes: list[Episode] = []
    for i in range(0, len(tasks), batch_size):
        episodes.extend(runner.run(model, tasks[i : i + batch_size], 1, temperature=0.0))
    rewards = [score_episode(ep) for ep in episodes]
    return summarize(episodes, rewards), episodes, rewards


def load_policy(
    ckpt_path: str, max_new_tokens: int | None = None, max_turns: int | None = None
) -> tuple[Any, torch.nn.Module, RolloutRunner]:
    """(run config, model in eval mode, a rollout runner) from a kimi_lab checkpoint; the
    episode budgets default to the checkpoint's ``phase.rl`` settings."""
    from kimi_lab.loading import load_model

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
    batch_size: int = 16,
    max_new_tokens: int | None = None,
    max_turns: int | None = None,
) -> dict[str, Any]:
    """Greedy evaluation of a checkpoint on the first ``n`` val prompts of each task folder."""
    from kimi_lab.data.tasks import EvalTasks, task_urls

    _, model, runner = load_policy(ckpt_path, max_new_tokens, max_turns)
    tasks: list[TaskInput] = []
    for name, path in task_dirs.items():
        tasks.extend(EvalTasks(name, task_urls(name, path, "val"), n))
    summary, episodes, rewards = evaluate(model, runner, tasks, batch_size)
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
    return {"checkpoint": str(ckpt_path), "summary": summary, "examples": examples}
