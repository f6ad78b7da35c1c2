"""Shard samples -> documents: ordered text token runs and vision blocks.

Decoding is explicit per file extension (PIL for images, PyAV for video, UTF-8
for text and code, JSON for records): nothing is ever unpickled. A sample that
cannot be decoded raises ``SampleSkip`` with a reason, which the stream counts
(or, in strict mode, turns into an error naming the shard and the key).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np

from kimi_lab.config.schema import VisionDataConfig
from kimi_lab.data.schema import LOSS_SPANS, SCHEMA_VERSION
from kimi_lab.data.tokenizer import Tokenizer
from kimi_lab.data.vision import (
    VisionBlock,
    blocks_in_order,
    image_block,
    media_blocks,
    run_sizes,
    video_blocks,
)
from kimi_lab.metrics import LOSS_SUBSETS

Segment = list[int] | VisionBlock

SKIP_REASONS = (
    "corrupt_tar",
    "bad_json",
    "schema_version",
    "missing_key",
    "bad_text",
    "bad_image",
    "bad_video",
    "too_long",
)
IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")
CODE_EXTS = ("svg", "html", "jsx", "txt")


class SampleSkip(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        assert reason in SKIP_REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class Document:
    key: str
    url: str
    modality: str
    segments: list[Segment]
    # Chat documents: one flag per token of the stream (a vision block counts its run of
    # n_tokens + 2), True where the token is a training target (the assistant's turns).
    # None: every text token is a target. Chat documents are also never split over windows.
    train_flags: list[bool] | None = None
    # One int per token of the stream (vision runs included, as above): bit i set where the token
    # belongs to the named subset LOSS_SUBSETS[i] (the record's ``loss_spans``). None: no subset.
    marks: list[int] | None = None


def _text(sample: dict[str, Any], ext: str) -> str:
    raw = sample.get(ext)
    if not isinstance(raw, bytes):
        raise SampleSkip("missing_key", f"no .{ext}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exn:
        raise SampleSkip("bad_text", f".{ext} is not UTF-8 ({exn.reason})") from None


def decode_image(data: bytes) -> np.ndarray:
    """Any PIL-readable image -> uint8 RGB (H, W, 3), transparency composited on white."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "P"):
                rgba = im.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                im = Image.alpha_composite(background, rgba)
            return np.asarray(im.convert("RGB"))
    except Exception as exn:  # PIL raises many types for corrupt data
        raise SampleSkip("bad_image", f"{type(exn).__name__}: {exn}") from None


def decode_video(data: bytes) -> np.ndarray:
    """An mp4 (any PyAV-readable container) -> uint8 RGB frames (T, H, W, 3)."""
    import av

    try:
        with av.open(io.BytesIO(data)) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    except Exception as exn:  # av.error.* and friends
        raise SampleSkip("bad_video", f"{type(exn).__name__}: {exn}") from None
    if not frames:
        raise SampleSkip("bad_video", "no frames")
    return np.stack(frames)


@dataclass
class Parsed:
    """A decoded sample before tokenization: its parts in order (str, RGB image, or video frames)."""

    key: str
    url: str
    modality: str
    record: dict[str, Any]
    # ("text", str) | ("image", (H, W, 3) uint8) | ("video", (T, H, W, 3) uint8)
    # | ("chat", (messages, {image name: (H, W, 3) uint8}))
    parts: list[tuple[str, Any]]


def parse_record(sample: dict[str, Any]) -> dict[str, Any]:
    raw = sample.get("json")
    if not isinstance(raw, bytes):
        raise SampleSkip("missing_key", "no .json record")
    try:
        record = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exn:
        raise SampleSkip("bad_json", str(exn)) from None
    if not isinstance(record, dict):
        raise SampleSkip("bad_json", "the record is not an object")
    if record.get("schema_version") != SCHEMA_VERSION:
        raise SampleSkip(
            "schema_version", f"schema_version={record.get('schema_version')!r}, expected {SCHEMA_VERSION}"
        )
    return record


def _bytes(sample: dict[str, Any], ext: str) -> bytes:
    data = sample.get(ext)
    if not isinstance(data, bytes):
        raise SampleSkip("missing_key", f"no .{ext}")
    return data


def _find(sample: dict[str, Any], exts: tuple[str, ...]) -> str:
    for ext in exts:
        if isinstance(sample.get(ext), bytes):
            return ext
    raise SampleSkip("missing_key", f"none of .{', .'.join(exts)}")


def decode_media(sample: dict[str, Any], name: str) -> np.ndarray:
    """The medium a chat message names: ``NAME.png`` (etc.) as (H, W, 3), or a clip ``NAME.mp4`` as
    (T, H, W, 3)."""
    ext = next((e for e in (*IMAGE_EXTS, "mp4") if isinstance(sample.get(f"{name}.{e}"), bytes)), None)
    if ext is None:
        raise SampleSkip("missing_key", f"chat image {name!r} has no file in the sample")
    return decode_video(sample[f"{name}.mp4"]) if ext == "mp4" else decode_image(sample[f"{name}.{ext}"])


def _chat(record: dict[str, Any], sample: dict[str, Any]) -> tuple[list[Any], dict[str, np.ndarray]]:
    """A chat record's messages, and every image or clip they name (``NAME.png``, ``NAME.mp4``...)."""
    from kimi_lab.chat_format import ChatFormatError, conversation_from_list

    try:
        # Prompts (RL and evaluation tasks) have no reply yet; the SFT decoder requires one.
        messages = conversation_from_list(record.get("messages"), require_assistant=False)
    except ChatFormatError as exn:
        raise SampleSkip("bad_json", f"chat: {exn}") from None
    return messages, {name: decode_media(sample, name) for name in {n for m in messages for n in m.images}}


def parse_sample(sample: dict[str, Any]) -> Parsed:
    """Decode every part of a sample (raises ``SampleSkip`` with the reason when one fails)."""
    record = parse_record(sample)
    modality = record.get("modality")
    parts: list[tuple[str, Any]]
    if modality == "text":
        parts = [("text", _text(sample, "txt"))]
    elif modality == "image":
        # The picture, then the program that renders it (vision-based coding) or its caption.
        image = decode_image(_bytes(sample, _find(sample, IMAGE_EXTS)))
        parts = [("image", image), ("text", _text(sample, _find(sample, CODE_EXTS)))]
    elif modality == "video":
        # The clip, then the page that plays it (a page recording) or its caption.
        parts = [
            ("video", decode_video(_bytes(sample, "mp4"))),
            ("text", _text(sample, _find(sample, CODE_EXTS))),
        ]
    elif modality == "interleaved":
        segments = record.get("segments")
        if not isinstance(segments, list) or not segments:
            raise SampleSkip("missing_key", "interleaved record without segments")
        parts = []
        for seg in segments:
            if isinstance(seg, dict) and isinstance(seg.get("text"), str):
                parts.append(("text", seg["text"]))
            elif isinstance(seg, dict) and isinstance(seg.get("image"), str):
                parts.append(("image", decode_image(_bytes(sample, seg["image"]))))
            else:
                raise SampleSkip("bad_json", f"bad interleaved segment {seg!r:.80}")
    elif modality == "chat":
        parts = [("chat", _chat(record, sample))]
    else:
        raise SampleSkip("bad_json", f"unknown modality {modality!r}")
    return Parsed(str(sample.get("__key__")), str(sample.get("__url__")), modality, record, parts)


def _loss_spans(parsed: Parsed) -> dict[int, list[tuple[int, int]]]:
    """The record's ``loss_spans`` as {subset bit: sorted character spans} of its one text part."""
    raw = parsed.record.get(LOSS_SPANS)
    if raw is None:
        return {}
    texts = [v for kind, v in parsed.parts if kind == "text"]
    if not isinstance(raw, dict) or len(texts) != 1:
        raise SampleSkip("bad_json", f"{LOSS_SPANS} must map subset names to spans of the sample's one text")
    out: dict[int, list[tuple[int, int]]] = {}
    for name, spans in raw.items():
        if name not in LOSS_SUBSETS:
            raise SampleSkip(
                "bad_json", f"{LOSS_SPANS}: unknown subset {name!r} (known: {', '.join(LOSS_SUBSETS)})"
            )
        ok = isinstance(spans, list) and all(
            isinstance(sp, list) and len(sp) == 2 and all(isinstance(x, int) for x in sp) for sp in spans
        )
        pairs = sorted((int(a), int(b)) for a, b in spans) if ok else []
        if not ok or any(not 0 <= a < b <= len(texts[0]) for a, b in pairs):
            raise SampleSkip(
                "bad_json", f"{LOSS_SPANS}[{name!r}]: expected [[start, end], ...] inside the text"
            )
        out[LOSS_SUBSETS.index(name)] = pairs
    return out


def _encode_marked(
    tok: Tokenizer, text: str, spans: dict[int, list[tuple[int, int]]]
) -> tuple[list[int], list[int]]:
    """Token ids of ``text`` and, per token, the bits of the subsets whose spans hold it.

    The text is encoded piece by piece, cut at every span edge, so each token lies in one
    piece; the builder puts edges where the tokenizer splits anyway (before a word's space)."""
    edges = sorted({0, len(text), *(x for pairs in spans.values() for sp in pairs for x in sp)})
    ids: list[int] = []
    bits: list[int] = []
    for a, b in pairwise(edges):
        piece = tok.encode(text[a:b])
        bit = sum(1 << i for i, pairs in spans.items() if any(s <= a and b <= e for s, e in pairs))
        ids.extend(piece)
        bits.extend([bit] * len(piece))
    return ids, bits


class Decoder:
    """Turns WebDataset samples into documents for the packer: tokens and vision blocks."""

    def __init__(self, tokenizer: Tokenizer, vision: VisionDataConfig) -> None:
        self.tok = tokenizer
        self.vision = vision

    def __call__(self, sample: dict[str, Any]) -> Document:
        parsed = parse_sample(sample)
        if parsed.modality == "chat":
            return self._chat(parsed)
        spans = _loss_spans(parsed)
        segments: list[Segment] = []
        marks: list[int] | None = [] if spans else None
        p = self.vision.patch_size
        for kind, value in parsed.parts:
            if kind == "text":
                ids, bits = _encode_marked(self.tok, value, spans) if spans else (self.tok.encode(value), [])
                segments.append(ids)
                if marks is not None:
                    marks.extend(bits)
                continue
            h, w = value.shape[-3:-1]
            if h < p or w < p:
                reason = "bad_image" if kind == "image" else "bad_video"
                raise SampleSkip(reason, f"{w}x{h} pixels is smaller than one {p}x{p} patch")
            new = [image_block(value, self.vision)] if kind == "image" else video_blocks(value, self.vision)
            segments.extend(new)
            if marks is not None:
                marks.extend([0] * sum(b.n_tokens + 2 for b in new))
        return Document(parsed.key, parsed.url, parsed.modality, segments, marks=marks)

    def _chat(self, parsed: Parsed) -> Document:
        from kimi_lab.chat_format import ChatEncoder

        messages, images = parsed.parts[0][1]
        if not any(m.role == "assistant" for m in messages):
            raise SampleSkip("bad_json", "a chat sample without an assistant turn has nothing to train on")
        p = self.vision.patch_size
        blocks = {}
        for name, media in images.items():
            if media.shape[-3] < p or media.shape[-2] < p:
                raise SampleSkip("bad_image", f"{name}: smaller than one {p}x{p} patch")
            blocks[name] = media_blocks(media, self.vision)
        enc = ChatEncoder(self.tok).encode(messages, lambda name: run_sizes(blocks[name]))
        # Split the flat stream at each placeholder run into text segments and vision blocks.
        segments: list[Segment] = []
        start = 0
        for (offset, _), block in zip(enc.media, blocks_in_order(enc.media, blocks), strict=True):
            if offset > start:
                segments.append(enc.tokens[start:offset])
            segments.append(block)
            start = offset + block.n_tokens + 2
        if start < len(enc.tokens):
            segments.append(enc.tokens[start:])
        return Document(parsed.key, parsed.url, "chat", segments, train_flags=list(enc.train))
