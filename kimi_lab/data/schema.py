"""The JSON record every shard sample carries (``<key>.json``), shared by builders and readers."""

from __future__ import annotations

import hashlib
from typing import Any

SCHEMA_VERSION = 1
MODALITIES = ("text", "image", "video", "interleaved", "chat")
# Optional record key: {subset name: [[start, end], ...]} character spans of the sample's text
# (``.txt``) whose tokens form a named subset that validation scores on its own
# (names: ``kimi_lab.metrics.LOSS_SUBSETS``).
LOSS_SPANS = "loss_spans"


def sample_key(source: str, content: bytes) -> str:
    """A stable key: the source tag and a content hash (also the dedup identity)."""
    return f"{source}-{hashlib.sha1(content).hexdigest()[:20]}"


def make_record(modality: str, source: str, **provenance: Any) -> dict[str, Any]:
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
    return {
        "schema_version": SCHEMA_VERSION,
        "modality": modality,
        "source": source,
        "provenance": provenance,
    }
