"""Rotary position embedding with the optional YaRN extension (DeepSeek-V3 / K2 form).

RoPE rotates the rope part of each query/key head by position-dependent angles.
YaRN stretches the low frequencies by ``factor`` (interpolation) while keeping the
high ones (extrapolation), blending the two over a ramp between the dimensions that
complete ``beta_fast`` and ``beta_slow`` rotations within the original context.
Layout: the first half of the rope dims pairs with the second half ("rotate half").
"""

from __future__ import annotations

import math

import torch
from torch import nn

from kimi_lab.config.schema import RopeConfig, RopeScaling


def yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    """Attention temperature correction for a context stretched ``scale`` times."""
    if scale <= 1.0:
        return 1.0
    return 0.1 * mscale * math.log(scale) + 1.0


def _correction_dim(n_rotations: float, dim: int, base: float, max_pos: int) -> float:
    # The rope dimension whose frequency completes n_rotations over max_pos positions.
    return (dim * math.log(max_pos / (n_rotations * 2 * math.pi))) / (2 * math.log(base))


def rope_inv_freq(dim: int, cfg: RopeConfig) -> tuple[torch.Tensor, float]:
    """Inverse frequencies (dim/2,) and the cos/sin amplitude factor."""
    exponents = torch.arange(0, dim, 2, dtype=torch.float64) / dim
    inv_freq = 1.0 / (cfg.theta**exponents)
    if cfg.scaling == RopeScaling.none:
        return inv_freq.float(), 1.0
    low = max(math.floor(_correction_dim(cfg.beta_fast, dim, cfg.theta, cfg.original_max_seq_len)), 0)
    high = min(math.ceil(_correction_dim(cfg.beta_slow, dim, cfg.theta, cfg.original_max_seq_len)), dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
    keep = 1.0 - ramp  # 1 = extrapolate (high frequency), 0 = interpolate
    inv_freq = (inv_freq / cfg.factor) * (1 - keep) + inv_freq * keep
    if cfg.mscale and cfg.mscale_all_dim:
        amplitude = yarn_mscale(cfg.factor, cfg.mscale) / yarn_mscale(cfg.factor, cfg.mscale_all_dim)
    else:
        amplitude = yarn_mscale(cfg.factor)
    return inv_freq.float(), amplitude


def softmax_scale(qk_head_dim: int, cfg: RopeConfig) -> float:
    scale = qk_head_dim**-0.5
    if cfg.scaling == RopeScaling.yarn and cfg.mscale_all_dim:
        scale *= yarn_mscale(cfg.factor, cfg.mscale_all_dim) ** 2
    return scale


class RotaryEmbedding(nn.Module):
    """Caches cos/sin tables; ``forward(positions)`` returns them for (B, T) positions."""

    def __init__(self, dim: int, cfg: RopeConfig) -> None:
        super().__init__()
        inv_freq, self.amplitude = rope_inv_freq(dim, cfg)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # positions: (B, T) integer -> cos, sin: (B, T, dim) in fp32
        freqs = positions.float()[..., None] * self.inv_freq.to(positions.device)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos() * self.amplitude, emb.sin() * self.amplitude


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, T, H, r); cos/sin: (B, T, r). Rotation in fp32, result in x's dtype."""
    half = x.shape[-1] // 2
    x32 = x if x.dtype == torch.float32 else x.float()
    rotated = torch.cat((-x32[..., half:], x32[..., :half]), dim=-1)
    out = x32 * cos[:, :, None, :] + rotated * sin[:, :, None, :]
    return out if out.dtype == x.dtype else out.to(x.dtype)
