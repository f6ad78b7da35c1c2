"""What a training batch held: the typed statistics the datamodule hands the phase.

Counted in the DataLoader workers (``MixedStream``), carried in the batch's meta,
kept by ``KimiDataModule.latest`` for the batch the trainer consumed last, and
logged by the phase as the ``data/...`` metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class BatchStats:
    text_tokens: int  # input tokens that are text (not placeholders, media markers or padding)
    image_tokens: int  # image placeholders
    video_tokens: int  # video placeholders
    pad_tokens: int
    tokens: int  # every input token but padding
    vision_source_tokens: int  # input tokens from documents of vision sources
    vision_ratio_target: float | None  # the fusion schedule's target at this step; None: none configured
    keys: list[str] = field(default_factory=list)  # the samples in the batch
    skipped: dict[str, int] = field(default_factory=dict)  # samples skipped so far, by reason, all workers
