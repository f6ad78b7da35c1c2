"""Warmup-stable-decay (WSD) learning-rate schedule, as K2 used.

Linear warmup to the peak, a long constant stage, then a cosine decay to a floor
(``min_lr_ratio`` x peak) over the last ``decay_steps``. Returned as a multiplier
of the peak LR, for ``torch.optim.lr_scheduler.LambdaLR``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kimi_lab.config.schema import RunConfig


def wsd_multiplier(
    step: int, total_steps: int, warmup_steps: int, decay_steps: int, min_ratio: float
) -> float:
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_start = total_steps - decay_steps
    if decay_steps <= 0 or step < decay_start:
        return 1.0
    progress = min((step - decay_start) / decay_steps, 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class WSD:
    """Picklable LambdaLR multiplier (checkpoints store the scheduler's state)."""

    def __init__(self, total_steps: int, warmup_steps: int, decay_steps: int, min_ratio: float) -> None:
        self.total_steps, self.warmup_steps = total_steps, warmup_steps
        self.decay_steps, self.min_ratio = decay_steps, min_ratio

    def __call__(self, step: int) -> float:
        return wsd_multiplier(step, self.total_steps, self.warmup_steps, self.decay_steps, self.min_ratio)


def requested_schedule_steps(cfg: RunConfig) -> tuple[int, int]:
    """(warmup steps, decay steps) as configured, from steps or from tokens, before any fitting."""
    t, d, s = cfg.trainer, cfg.data, cfg.phase.schedule
    tokens_per_step = d.batch_size * d.seq_len * t.accumulate_grad_batches * t.devices * t.num_nodes
    warmup = s.warmup_steps if s.warmup_tokens is None else math.ceil(s.warmup_tokens / tokens_per_step)
    decay = (
        round(s.decay_fraction * t.max_steps)
        if s.decay_tokens is None
        else math.ceil(s.decay_tokens / tokens_per_step)
    )
    return warmup, decay


def fit_schedule(warmup: int, decay: int, max_steps: int) -> tuple[int, int]:
    """Warmup and decay shrunk by the same factor until they fit in ``max_steps`` (unchanged when
    they already fit), so a short smoke run keeps the schedule's shape instead of being refused."""
    if warmup + decay <= max_steps:
        return warmup, decay
    factor = max_steps / (warmup + decay)
    return math.floor(warmup * factor), math.floor(decay * factor)


def schedule_steps(cfg: RunConfig) -> tuple[int, int]:
    """(warmup steps, decay steps) the run uses: the configured ones, fitted into trainer.max_steps."""
    return fit_schedule(*requested_schedule_steps(cfg), cfg.trainer.max_steps)


def schedule_warning(cfg: RunConfig) -> str | None:
    """One line saying how the schedule was shrunk, or None when it fits as configured."""
    asked = requested_schedule_steps(cfg)
    used = schedule_steps(cfg)
    if used == asked:
        return None
    return (
        f"phase.schedule: warmup {asked[0]} + decay {asked[1]} steps do not fit in "
        f"trainer.max_steps={cfg.trainer.max_steps}; shrunk proportionally to warmup {used[0]} + "
        f"decay {used[1]} steps"
    )
