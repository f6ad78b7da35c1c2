"""MoonViT-3D: one vision encoder for images and video, at native resolution (K2.5).

Shape legend: N patches in the packed sequence, D width, H heads, d head dim,
p patch size, (t, h, w) a block's grid (frames, patch rows, patch columns).

- Patch n' pack (NaViT): every image and video chunk of a batch is one block of
  a single packed sequence; attention is bidirectional inside a block and never
  across blocks (block-diagonal), so no padding to a square and no resizing.
- Positions: a learned (S, S) grid of absolute embeddings, bicubically resized
  to each block's (h, w), plus 2-D RoPE over (row, column) inside attention.
- Video: a chunk's t <= 4 frames form one block, so one attention spans space and
  time; frames of multi-frame chunks get a fixed sin-cos time embedding (single
  frames, i.e. images, get none). The same weights serve images and video.
- After the encoder, each chunk is averaged over time per spatial position, and
  patches are grouped merge x merge for the projector: a 4-frame chunk costs the
  LM as many tokens as one frame.
Numerically this matches transformers' ``Kimi_K25VisionModel``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kimi_lab.config.schema import VisionConfig
from kimi_lab.model.sharding import scale_rows_


def time_table(frames: int, dim: int) -> torch.Tensor:
    """(frames + 1, D) sin-cos table; row 0 is zero (single-frame blocks get no time term)."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
    freqs = torch.outer(torch.arange(frames, dtype=torch.float), inv_freq)
    return torch.cat([torch.zeros(1, dim), torch.cat([freqs.sin(), freqs.cos()], dim=1)])


class VisionRoPE(nn.Module):
    """Axial 2-D RoPE: head dims alternate between column and row frequencies."""

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        half = head_dim // 2  # each axis gets half of the rotated pairs
        inv_freq = 1.0 / (theta ** (torch.arange(0, half, 2, dtype=torch.float) / half))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, rows: torch.Tensor, cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # (N, d/4) per axis -> interleave (col, row) per frequency -> (N, d/2) -> repeat for both halves
        fr, fc = rows.float()[:, None] * self.inv_freq, cols.float()[:, None] * self.inv_freq
        angles = torch.stack((fc, fr), dim=-1).flatten(1)
        angles = torch.cat((angles, angles), dim=-1)
        return angles.cos(), angles.sin()


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: (N, H, d); cos/sin: (N, d). Rotation in fp32.
    half = x.shape[-1] // 2
    x32 = x.float()
    rotated = torch.cat((-x32[..., half:], x32[..., :half]), dim=-1)
    return (x32 * cos[:, None] + rotated * sin[:, None]).to(x.dtype)


class VisionAttention(nn.Module):
    def __init__(self, dim: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads, self.head_dim = n_heads, dim // n_heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.scale = self.head_dim**-0.5
        self.measure_max_logit = False
        self.register_buffer("max_logit", torch.full((n_heads,), float("-inf")), persistent=False)

    def forward(
        self, x_ND: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], blocks: list[tuple[int, int]]
    ) -> torch.Tensor:
        N = x_ND.shape[0]
        shape = (N, self.n_heads, self.head_dim)
        q = _rotate(self.q_proj(x_ND).view(shape), *rope)
        k = _rotate(self.k_proj(x_ND).view(shape), *rope)
        v = self.v_proj(x_ND).view(shape)
        out = torch.empty_like(v)
        # Block-diagonal attention; blocks of equal length share one batched SDPA call.
        by_length: dict[int, list[int]] = {}
        for start, length in blocks:
            by_length.setdefault(length, []).append(start)
        for length, starts in by_length.items():
            idx = (
                torch.tensor(starts, device=x_ND.device)[:, None] + torch.arange(length, device=x_ND.device)
            ).reshape(-1)
            qb, kb, vb = (
                t.index_select(0, idx).view(len(starts), length, self.n_heads, self.head_dim).transpose(1, 2)
                for t in (q, k, v)
            )
            if self.measure_max_logit and self.training:
                self.max_logit = torch.maximum(self.max_logit, block_max_logits(qb, kb, self.scale))
            ob = F.scaled_dot_product_attention(qb, kb, vb)  # bidirectional within the block
            out.index_copy_(0, idx, ob.transpose(1, 2).reshape(-1, self.n_heads, self.head_dim))
        return self.proj(out.reshape(N, -1))

    @torch.no_grad()
    def clip_heads(self, gamma_H: torch.Tensor) -> None:
        """QK-Clip for standard attention: query and key projections (and biases) by sqrt(gamma)."""
        root_R = gamma_H.sqrt().repeat_interleave(self.head_dim)  # one scale per output row
        for proj in (self.q_proj, self.k_proj):
            scale_rows_(proj.weight, root_R)
            scale_rows_(proj.bias, root_R)


@torch.no_grad()
def block_max_logits(q_BHNd: torch.Tensor, k_BHNd: torch.Tensor, scale: float) -> torch.Tensor:
    """Largest pre-softmax logit per head over same-length blocks (bidirectional: no mask)."""
    logits = torch.matmul(q_BHNd.float(), k_BHNd.float().transpose(-1, -2)) * scale
    return logits.amax(dim=(0, 2, 3))


class VisionBlock(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps)
        self.attn = VisionAttention(cfg.hidden_size, cfg.n_heads)
        self.norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps)
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.ffn_dim)
        self.fc2 = nn.Linear(cfg.ffn_dim, cfg.hidden_size)

    def forward(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], blocks: list[tuple[int, int]]
    ) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope, blocks)
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x)), approximate="tanh"))


class MoonViT3D(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        D, p = cfg.hidden_size, cfg.patch_size
        # The patch embedding is a p x p stride-p convolution; on flattened patches that is a Linear.
        self.patch_embed = nn.Linear(3 * p * p, D)
        self.pos_emb = nn.Parameter(torch.empty(cfg.pos_emb_size, cfg.pos_emb_size, D))
        nn.init.trunc_normal_(self.pos_emb, std=0.02)
        self.register_buffer("time_emb", time_table(cfg.pos_emb_time, D), persistent=False)
        self.rope = VisionRoPE(D // cfg.n_heads, cfg.rope_theta)
        self.layers = nn.ModuleList(VisionBlock(cfg) for _ in range(cfg.n_layers))
        self.final_norm = nn.LayerNorm(D, eps=cfg.norm_eps)

    def _positions(
        self, grid: list[tuple[int, int, int]], device: torch.device, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Absolute (spatial + time) embeddings, and row/column indices, for every patch."""
        table = self.pos_emb.permute(2, 0, 1)[None]  # (1, D, S, S)
        resized: dict[tuple[int, int], torch.Tensor] = {}
        pos, rows, cols = [], [], []
        for t, h, w in grid:
            if (h, w) not in resized:
                grid_hw = F.interpolate(table.float(), size=(h, w), mode="bicubic", align_corners=False)
                resized[(h, w)] = grid_hw[0].permute(1, 2, 0).reshape(h * w, -1)
            frame_idx = torch.arange(t, device=device) + int(t > 1)  # 0 = no time term
            pos.append(resized[(h, w)].repeat(t, 1) + self.time_emb[frame_idx].repeat_interleave(h * w, 0))
            r = torch.arange(h, device=device).repeat_interleave(w)
            c = torch.arange(w, device=device).repeat(h)
            rows.append(r.repeat(t))
            cols.append(c.repeat(t))
        return torch.cat(pos).to(dtype), torch.cat(rows), torch.cat(cols)

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """(N, 3, p, p) patches of all blocks -> (tokens, merge**2, D): time-pooled, grouped for merging."""
        grid = [tuple(int(v) for v in g) for g in grid_thw.tolist()]
        x = self.patch_embed(pixel_values.flatten(1))
        pos, rows, cols = self._positions(grid, x.device, x.dtype)
        x = x + pos
        rope = self.rope(rows, cols)
        blocks, start = [], 0
        per_frame = self.cfg.temporal_attention == "per_frame"
        for t, h, w in grid:
            if per_frame:  # a block per frame: no attention across time inside the chunk
                blocks.extend((start + i * h * w, h * w) for i in range(t))
            else:
                blocks.append((start, t * h * w))
            start += t * h * w
        for layer in self.layers:
            x = layer(x, rope, blocks)
        x = self.final_norm(x)
        return self._pool_and_group(x, grid)

    def _pool_and_group(self, x_ND: torch.Tensor, grid: list[tuple[int, int, int]]) -> torch.Tensor:
        m = self.cfg.merge_size
        out, start = [], 0
        for t, h, w in grid:
            chunk = x_ND[start : start + t * h * w].float().view(t, h, w, -1).mean(0)  # temporal pooling
            # (h, w, D) -> (h/m, w/m, m, m, D): merged tokens row-major, patches row-major inside
            grouped = (
                chunk.view(h // m, m, w // m, m, -1)
                .permute(0, 2, 1, 3, 4)
                .reshape(h // m * (w // m), m * m, -1)
            )
            out.append(grouped)
            start += t * h * w
        return torch.cat(out).to(x_ND.dtype)


class Projector(nn.Module):
    """K2.5's MLP projector: per-patch LayerNorm, then the merge x merge group as one vector,
    Linear, GELU, Linear to the LM width."""

    def __init__(self, vision: VisionConfig, lm_hidden: int) -> None:
        super().__init__()
        merged = vision.hidden_size * vision.merge_size**2
        self.pre_norm = nn.LayerNorm(vision.hidden_size, eps=vision.norm_eps)
        self.in_proj = nn.Linear(merged, merged)
        self.out_proj = nn.Linear(merged, lm_hidden)

    def forward(self, grouped_TKD: torch.Tensor) -> torch.Tensor:
        x = self.pre_norm(grouped_TKD).flatten(1)
        return self.out_proj(F.gelu(self.in_proj(x)))
