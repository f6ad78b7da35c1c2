"""Images and video as MoonViT-3D input: native-resolution patches plus their grid sizes.

Same layout as transformers' ``kimi_k25`` processors: ``pixel_values`` is
(n_patches, 3, p, p) with patches row-major within each frame and frames in
order, and each image or video chunk has a grid ``(t, h, w)`` in patches. An
image keeps its aspect ratio: it is only downscaled when it has more than
``max_patches`` patches, then padded (bottom/right) to a multiple of
``patch_size * merge_size``. A video is sampled into chunks of up to
``chunk_frames`` frames; a chunk yields as many LM tokens as one frame
(temporal pooling), ``h * w / merge_size**2``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from kimi_lab.config.schema import VisionDataConfig

# The (0.5, 0.5, 0.5) mean/std the K2.5 image processor uses: pixels land in [-1, 1].
MEAN, STD = 0.5, 0.5


@dataclass
class VisionBlock:
    """One image, or one chunk of a video: what fills one run of placeholder tokens."""

    kind: str  # "image" or "video"
    pixel_values: torch.Tensor  # (t * h * w, 3, p, p) float32, normalised
    grid_thw: tuple[int, int, int]  # frames, patch rows, patch columns
    n_tokens: int  # placeholder tokens in the LM sequence


def fit_size(height: int, width: int, cfg: VisionDataConfig) -> tuple[tuple[int, int], tuple[int, int]]:
    """(resized height, width) and (padded height, width) for one image or frame."""
    p, unit = cfg.patch_size, cfg.patch_size * cfg.merge_size
    patches = max(1.0, height / p) * max(1.0, width / p)
    scale = min(1.0, math.sqrt(cfg.max_patches / patches))
    new_h, new_w = max(1, int(height * scale)), max(1, int(width * scale))
    # Padding to the merge unit may add patches back; shrink until it fits the budget.
    while math.ceil(new_h / unit) * math.ceil(new_w / unit) * cfg.merge_size**2 > max(
        cfg.max_patches, cfg.merge_size**2
    ):
        new_h, new_w = max(1, int(new_h * 0.95)), max(1, int(new_w * 0.95))
    return (new_h, new_w), (math.ceil(new_h / unit) * unit, math.ceil(new_w / unit) * unit)


def _resize(frames_THWC: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    h, w = size
    if frames_THWC.shape[1:3] == (h, w):
        return frames_THWC
    return np.stack([np.asarray(Image.fromarray(f).resize((w, h), Image.BICUBIC)) for f in frames_THWC])


def patchify(frames_THWC: np.ndarray, cfg: VisionDataConfig) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """uint8 frames (T, H, W, 3) of one image/chunk -> normalised patches and their grid."""
    T, H, W, _ = frames_THWC.shape
    (h, w), (ph, pw) = fit_size(H, W, cfg)
    frames = _resize(frames_THWC, (h, w))
    padded = np.zeros((T, ph, pw, 3), dtype=np.uint8)
    padded[:, :h, :w] = frames
    x = torch.from_numpy(padded).float().div_(255.0).sub_(MEAN).div_(STD)
    p = cfg.patch_size
    gh, gw = ph // p, pw // p
    # (T, gh, p, gw, p, C) -> (T, gh, gw, C, p, p) -> (T*gh*gw, C, p, p)
    patches = x.view(T, gh, p, gw, p, 3).permute(0, 1, 3, 5, 2, 4).reshape(T * gh * gw, 3, p, p)
    return patches.contiguous(), (T, gh, gw)


def image_block(rgb_HWC: np.ndarray, cfg: VisionDataConfig) -> VisionBlock:
    patches, grid = patchify(rgb_HWC[None], cfg)
    return VisionBlock("image", patches, grid, grid[1] * grid[2] // cfg.merge_size**2)


def sample_frames(n_frames: int, cfg: VisionDataConfig) -> list[int]:
    """Indices of at most ``max_frames`` frames, evenly spread over the clip."""
    if n_frames <= cfg.max_frames:
        return list(range(n_frames))
    step = n_frames / cfg.max_frames
    return [int(i * step) for i in range(cfg.max_frames)]


def video_blocks(frames_THWC: np.ndarray, cfg: VisionDataConfig) -> list[VisionBlock]:
    """A clip as consecutive chunks of up to ``chunk_frames`` frames, all at one frame size."""
    frames = frames_THWC[sample_frames(len(frames_THWC), cfg)]
    blocks = []
    for start in range(0, len(frames), cfg.chunk_frames):
        patches, grid = patchify(frames[start : start + cfg.chunk_frames], cfg)
        blocks.append(VisionBlock("video", patches, grid, grid[1] * grid[2] // cfg.merge_size**2))
    return blocks


def media_blocks(media: np.ndarray, cfg: VisionDataConfig) -> list[VisionBlock]:
    """An image (H, W, 3) as one block, a clip (T, H, W, 3) as its chunks."""
    return [image_block(media, cfg)] if media.ndim == 3 else video_blocks(media, cfg)


def run_sizes(blocks: list[VisionBlock]) -> int | list[int]:
    """What ``ChatEncoder`` asks of a medium: an image's token count, or a clip's per chunk."""
    return blocks[0].n_tokens if blocks[0].kind == "image" else [b.n_tokens for b in blocks]


def blocks_in_order(media: list[tuple[int, str]], blocks: dict[str, list[VisionBlock]]) -> list[VisionBlock]:
    """The blocks of an encoded chat's placeholder runs, in order (a clip names itself once per chunk;
    an image named twice is the same block twice)."""
    seen: dict[str, int] = {}
    out = []
    for _, name in media:
        i = seen.get(name, 0)
        out.append(blocks[name][i % len(blocks[name])])
        seen[name] = i + 1
    return out
