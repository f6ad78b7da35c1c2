"""The table of shard kinds ``kimi-lab data build KIND`` knows.

A kind names its builder by import path (so listing the kinds imports no
builder and none of their heavy dependencies), what it makes, and which of the
command's optional flags it takes. Adding a kind is one entry here: the CLI
reads its choices, help and the flags it forwards from this table.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# The optional flags of ``data build`` (argparse dest names) a kind may take;
# every kind takes --n, --seed and --shard-mb.
OPTIONS = (
    "src",
    "with_answers",
    "families",
    "modality",
    "with_visual_traces",
    "visual_fraction",
    "kinds",
    "val_fraction",
    "fanout_fraction",
    "overspawn_fraction",
    "width_range",
    "slack",
    "actions",
    "tokenizer",
    "max_turn_tokens",
)


@dataclass(frozen=True)
class DataKind:
    builder: str  # "module:function"; called as function(out, n=..., seed=..., shard_bytes=..., **options)
    what: str  # one line for --help
    options: tuple[str, ...] = ()

    def load(self) -> Callable[..., dict[str, Any]]:
        module, _, name = self.builder.partition(":")
        return getattr(importlib.import_module(module), name)


KINDS: dict[str, DataKind] = {
    "text": DataKind("data_pipelines.text:build_text", "standard-library text, or --src files", ("src",)),
    "image-code": DataKind(
        "data_pipelines.image_code:build_image_code",
        "rendered SVG / HTML pages and their code",
        ("src",),
    ),
    "video": DataKind("data_pipelines.video:build_video", "captioned clips of moving shapes"),
    "page-recordings": DataKind(
        "data_pipelines.page_recordings:build_page_recordings",
        "web pages in motion recorded by Chromium, next to their code",
    ),
    "captions": DataKind(
        "data_pipelines.captions:build_captions",
        "an image-code / page-recordings folder with captions in place of the code (--src)",
        ("src",),
    ),
    "interleaved": DataKind(
        "data_pipelines.interleaved:build_interleaved", "documents with figures and captions inline"
    ),
    "visual-tasks": DataKind(
        "data_pipelines.visual_tasks:build_visual_tasks",
        "task prompts with program-checked answers, for RL and eval",
        ("families", "modality"),
    ),
    "code-from-pixels": DataKind(
        "data_pipelines.code_tasks:build_code_tasks",
        "screenshot -> HTML/SVG and recording -> HTML prompts (--with-answers: SFT)",
        ("families", "with_answers", "val_fraction"),
    ),
    "zero-vision-sft": DataKind(
        "data_pipelines.zero_vision_sft:build_zero_vision_sft",
        "text-only tool-use trajectories",
        ("with_visual_traces", "visual_fraction"),
    ),
    "swarm-tasks": DataKind(
        "data_pipelines.swarm_tasks:build_swarm_tasks",
        "wide / deep search tasks over a generated corpus",
        ("kinds", "val_fraction", "width_range", "slack"),
    ),
    "swarm-sft": DataKind(
        "data_pipelines.swarm_sft:build_swarm_sft",
        "orchestrator demonstrations (fan-out, over-spawn and serial)",
        (
            "kinds",
            "val_fraction",
            "fanout_fraction",
            "overspawn_fraction",
            "width_range",
            "actions",
            "tokenizer",
            "max_turn_tokens",
        ),
    ),
}
