"""The PARL reward (K2.5): r = r_perf + lambda1 * r_parallel + lambda2 * r_finish.

``r_perf`` is the task's own score (item-F1 for wide search, exact match for deep).
The two auxiliary terms exist for the failure modes the report names, and are
annealed to 0 so that the final policy optimises the task alone:

- *serial collapse* (the orchestrator stops delegating and works alone):
  ``r_parallel`` pays for using sub-agents. Forms (``parallel_form``):
  ``"spawn"`` (default) = min(1, completed-or-not assignments / task width);
  ``"degree"`` = min(1, the widest stage / task width).
- *spurious parallelism* (spawning many sub-agents that do nothing useful):
  ``r_finish`` pays only for assignments that came back with a result. Forms
  (``finish_form``): ``"completed"`` (default) = completed / launched assignments
  (0 when none were launched); ``"answered"`` = 1 if the orchestrator gave an answer.

Both forms are normalised to [0, 1]; an episode that ran over its critical-step
budget gets r_perf = 0 (the answer came too late to count).
"""

from __future__ import annotations

from dataclasses import dataclass

from kimi_lab.config.schema import FINISH_FORMS, PARALLEL_FORMS, ParlConfig
from kimi_lab.swarm.result import EpisodeResult
from kimi_lab.swarm.types import SwarmTask


@dataclass(frozen=True)
class ParlWeights:
    lambda1: float  # r_parallel
    lambda2: float  # r_finish


def annealed(value: float, step: int, max_steps: int, start: float = 0.0, end: float = 0.75) -> float:
    """``value`` until ``start`` x ``max_steps``, then linearly to 0 at ``end`` x ``max_steps`` (fractions)."""
    t0, t1 = start * max_steps, end * max_steps
    if step <= t0:
        return value
    if step >= t1:
        return 0.0
    return value * (1.0 - (step - t0) / (t1 - t0))


def lambdas(pc: ParlConfig, step: int, max_steps: int) -> ParlWeights:
    """Phase parl's lambda1, lambda2 at ``step`` of ``max_steps``: annealed to 0 unless ``pc.anneal`` is off."""
    if not pc.anneal:
        return ParlWeights(pc.lambda1, pc.lambda2)
    return ParlWeights(
        annealed(pc.lambda1, step, max_steps, pc.anneal_start, pc.anneal_end),
        annealed(pc.lambda2, step, max_steps, pc.anneal_start, pc.anneal_end),
    )


def r_parallel(task: SwarmTask, res: EpisodeResult, form: str = "spawn") -> float:
    width = max(1, task.width)
    if form == "spawn":
        return min(1.0, res.assignments / width)
    if form == "degree":
        return min(1.0, res.max_parallelism / width)
    raise ValueError(f"parallel_form {form!r}: choose from {', '.join(PARALLEL_FORMS)}")


def r_finish(res: EpisodeResult, form: str = "completed") -> float:
    if form == "completed":
        return res.completed_assignments / res.assignments if res.assignments else 0.0
    if form == "answered":
        return float(res.answer is not None)
    raise ValueError(f"finish_form {form!r}: choose from {', '.join(FINISH_FORMS)}")


def perf_score(task: SwarmTask, res: EpisodeResult) -> float:
    """r_perf: the task's score of the episode's answer, 0 when it ran over a budget (too late to count)."""
    from kimi_lab.swarm.search_tasks import score_swarm

    return 0.0 if res.budget_exceeded else score_swarm(task, res.answer_text)


def parl_reward(
    task: SwarmTask,
    res: EpisodeResult,
    weights: ParlWeights,
    parallel_form: str = "spawn",
    finish_form: str = "completed",
) -> dict[str, float]:
    """Every component and the total; the runtime stores it in the trace's final event."""
    perf = perf_score(task, res)
    par = r_parallel(task, res, parallel_form)
    fin = r_finish(res, finish_form)
    total = perf + weights.lambda1 * par + weights.lambda2 * fin
    return {
        "total": total,
        "perf": perf,
        "parallel": par,
        "finish": fin,
        "lambda1": weights.lambda1,
        "lambda2": weights.lambda2,
    }
