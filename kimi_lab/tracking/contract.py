"""What a training phase hands the run-directory callback, and the totals its checkpoints keep.

A phase (``PhaseModule``) declares this state in ``__init__``; ``RunDirCallback``
reads it through the ``PhaseReport`` protocol instead of probing attributes, so a
renamed field fails type checks and tests rather than leaving a file silently empty.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Protocol, runtime_checkable

import torch


@dataclass
class RunCounters:
    """Running totals of a run. Saved in every checkpoint, so a resumed run continues them."""

    tokens: int = 0  # real (non-padding) tokens the training steps consumed, all ranks
    nonfinite_steps: int = 0  # steps skipped for a NaN/Inf loss or gradient
    nonfinite_streak: int = 0  # of those, how many in a row up to the latest step
    clipped_head_steps: int = 0  # (head, step) pairs QK-Clip rescaled

    def state_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any] | None) -> RunCounters:
        """Tolerant of checkpoints written before a counter existed (it starts at 0)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: int(v) for k, v in (state or {}).items() if k in known})


@dataclass
class MoELoad:
    """Tokens routed to each expert and the selection biases after one optimizer step."""

    step: int  # 0-based training step
    tokens_LE: torch.Tensor  # (MoE layers, experts), summed over micro-batches and ranks
    bias_LE: torch.Tensor  # (MoE layers, experts), after this step's update
    layers: tuple[int, ...]  # the model's layer index of each row (the numbering attn_logits uses)


@runtime_checkable
class PhaseReport(Protocol):
    """The phase side of the run-directory contract."""

    counters: RunCounters
    latest_moe_load: MoELoad | None

    def pop_attn_logits(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per tower: (max logit, clipped) per layer and head since the last call."""
        ...
