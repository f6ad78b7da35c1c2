"""How fast a phase samples its rollouts, and how much of each training step that takes.

RL and PARL spend most of a step generating episodes; these two figures show whether
a change to the decode path reached the training loop: ``rl/rollout_tokens_per_s``
(tokens the policy sampled / the wall time of playing the episodes, tools included)
and ``rl/sampling_fraction`` (that time / the whole training step, from the batch's
start to the end of its optimizer step).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kimi_lab.config.schema import RunConfig
from kimi_lab.metrics import RL_ROLLOUT_TOKENS_PER_S, RL_SAMPLING_FRACTION
from kimi_lab.phases.base import PhaseModule


class SamplingClock:
    """Times the sampling inside one training step; ``metrics`` at the step's end."""

    def __init__(self) -> None:
        self.step_started: float | None = None
        self.seconds = 0.0
        self.tokens = 0

    def start_step(self) -> None:
        self.step_started, self.seconds, self.tokens = time.perf_counter(), 0.0, 0

    @contextmanager
    def sampling(self) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - t0

    def metrics(self) -> dict[str, float]:
        """The step's figures; empty when nothing was timed (no step started, or no sampling)."""
        if self.step_started is None or self.seconds <= 0:
            return {}
        step = time.perf_counter() - self.step_started
        return {
            RL_ROLLOUT_TOKENS_PER_S: self.tokens / self.seconds,
            RL_SAMPLING_FRACTION: min(1.0, self.seconds / max(step, 1e-9)),
        }


class SamplingPhase(PhaseModule):
    """A phase that samples its own training data (rl, parl): its ``clock`` is restarted at
    every batch and its figures logged at the batch's end; ``training_step`` times the
    sampling with ``clock.sampling()`` and adds the sampled tokens to ``clock.tokens``."""

    def __init__(self, cfg: RunConfig) -> None:
        super().__init__(cfg)
        self.clock = SamplingClock()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_start(batch, batch_idx)
        self.clock.start_step()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)
        self.log_dict(self.clock.metrics(), on_step=True, on_epoch=False)
