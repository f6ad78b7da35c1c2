"""``kimi-lab data build video``: generated clips with known labels, encoded as mp4 (PyAV).

Each clip shows one coloured shape on a plain background doing one thing: moving
(left, right, up, down), appearing part-way through, or changing colour. Frame
counts and frame sizes vary from clip to clip. The labels (shape, colour, event,
direction, frame of the event) are exact, so motion-aware encoders can be tested
against encoders that see one frame at a time. A caption in plain words goes
with each clip (``.txt``); its record marks the words only motion can tell (the
direction of a move, the frame of an event) as character spans,
``loss_spans: {"motion": [[start, end], ...]}``, so training can report the loss on
those tokens alone (``val/video/motion_loss``). A span starts at the space before
its word, where a byte-level BPE splits words anyway, so encoding the caption span by
span gives the same tokens as encoding it whole.
"""

from __future__ import annotations

import io
import json
import random
from typing import Any

import numpy as np

from data_pipelines.common import ShardSink
from data_pipelines.image_code import PALETTE
from kimi_lab.data.schema import LOSS_SPANS, make_record, sample_key

BUILDER_VERSION = "video/2"  # /2: loss_spans mark the motion words of each caption
EVENTS = ("move", "appear", "colour_change")
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
SHAPES = ("square", "circle", "triangle")
FPS = 8


def _hex(colour: str) -> tuple[int, int, int]:
    return tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


def _draw(frame: np.ndarray, shape: str, cx: float, cy: float, r: int, rgb: tuple[int, int, int]) -> None:
    h, w, _ = frame.shape
    yy, xx = np.mgrid[0:h, 0:w]
    if shape == "square":
        mask = (abs(xx - cx) <= r) & (abs(yy - cy) <= r)
    elif shape == "circle":
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    else:  # triangle pointing up
        mask = (yy >= cy - r) & (yy <= cy + r) & (abs(xx - cx) <= (yy - (cy - r)) / 2)
    frame[mask] = rgb


def caption(labels: dict[str, Any]) -> tuple[str, list[list[int]]]:
    """The clip's caption and the character spans of its motion words (direction, event frame)."""
    head = f"A {labels['colour']} {labels['shape']}"
    event = labels["event"]
    if event == "move":
        lead, motion = f"{head} moves", f" {labels['direction']}"
    elif event == "appear":
        lead, motion = f"{head} appears at frame", f" {labels['event_frame']}"
    else:
        lead, motion = f"{head} turns {labels['new_colour']} at frame", f" {labels['event_frame']}"
    return f"{lead}{motion}.", [[len(lead), len(lead) + len(motion)]]


def make_clip(rng: random.Random) -> tuple[np.ndarray, dict[str, Any], str]:
    """(frames (T, H, W, 3) uint8, labels, caption)."""
    w, h = rng.randrange(64, 161, 16), rng.randrange(48, 129, 16)
    T = rng.randint(6, 20)
    shape = rng.choice(SHAPES)
    colour, other = rng.sample(sorted(n for n in PALETTE if n not in ("black", "navy")), 2)
    event = rng.choice(EVENTS)
    background = np.full((h, w, 3), 245, dtype=np.uint8)
    r = rng.randint(6, max(7, min(w, h) // 6))
    labels: dict[str, Any] = {"shape": shape, "colour": colour, "event": event, "frames": T, "size": [w, h]}
    cx, cy = rng.uniform(r + 2, w - r - 2), rng.uniform(r + 2, h - r - 2)
    direction = None
    if event == "move":
        direction = rng.choice(sorted(DIRECTIONS))
        dx, dy = DIRECTIONS[direction]
        travel = (w if dx else h) - 2 * r - 6
        # start near the far side so the whole move stays in view
        cx = r + 3 if dx > 0 else (w - r - 3 if dx < 0 else cx)
        cy = r + 3 if dy > 0 else (h - r - 3 if dy < 0 else cy)
        speed = travel / (T - 1)
        labels["direction"] = direction
    event_frame = rng.randint(1, T - 2)
    if event != "move":
        labels["event_frame"] = event_frame
    if event == "colour_change":
        labels["new_colour"] = other
    frames = []
    for t in range(T):
        frame = background.copy()
        x, y = cx, cy
        if direction is not None:
            dx, dy = DIRECTIONS[direction]
            x, y = cx + dx * speed * t, cy + dy * speed * t
        visible = not (event == "appear" and t < event_frame)
        rgb = _hex(PALETTE[other if (event == "colour_change" and t >= event_frame) else colour])
        if visible:
            _draw(frame, shape, x, y, r, rgb)
        frames.append(frame)
    return np.stack(frames), labels, caption(labels)[0]


def encode_mp4(frames: np.ndarray, fps: int = FPS) -> bytes:
    """H.264 in an mp4 container (PyAV); frame sizes must be even, which the generator ensures."""
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "18", "preset": "veryfast"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def build_video(
    out: str,
    n: int = 200,
    seed: int = 0,
    val_fraction: float = 0.05,
    shard_bytes: int = 256_000,
    progress: bool = True,
) -> dict[str, Any]:
    from tqdm import tqdm

    rng = random.Random(seed)
    sink = ShardSink(out, val_fraction, shard_bytes)
    try:
        for i in tqdm(range(n), desc="video", unit="clip", disable=not progress):
            frames, labels, text = make_clip(rng)
            mp4 = encode_mp4(frames)
            record = make_record(
                "video",
                "video-procedural",
                generator=BUILDER_VERSION,
                seed=seed,
                index=i,
                fps=FPS,
                labels=labels,
            )
            record[LOSS_SPANS] = {"motion": caption(labels)[1]}
            sink.write(
                {
                    "__key__": sample_key("video-procedural", mp4),
                    "mp4": mp4,
                    "txt": text.encode(),
                    "json": json.dumps(record).encode(),
                }
            )
    finally:
        manifest = sink.close("video", "video", seed, BUILDER_VERSION, fps=FPS, source="procedural")
    return manifest
