"""Multi-head Latent Attention (MLA), as in DeepSeek-V2/V3 and Kimi K2.

Shape legend: B batch, T tokens, D hidden, H heads, n/r/v the no-rope, rope and
value head dims, c the kv latent rank.

Keys and values come from one low-rank latent ``c_kv`` (B, T, c) shared by all
heads, plus one rotary key (B, T, 1, r) shared by all heads; queries come from an
optional low-rank latent. Only the ``n``-dim part of each head carries content
without position; the ``r``-dim part carries RoPE ("decoupled RoPE").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kimi_lab.config.schema import AttentionConfig
from kimi_lab.model.kv_cache import LatentCache
from kimi_lab.model.norm import RMSNorm
from kimi_lab.model.rope import apply_rope, softmax_scale
from kimi_lab.model.sharding import scale_rows_


class MultiHeadLatentAttention(nn.Module):
    def __init__(self, hidden_size: int, cfg: AttentionConfig, norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.nope_dim = cfg.qk_nope_head_dim
        self.rope_dim = cfg.qk_rope_head_dim
        self.v_dim = cfg.v_head_dim
        self.kv_rank = cfg.kv_lora_rank
        qk_dim = self.nope_dim + self.rope_dim
        self.scale = softmax_scale(qk_dim, cfg.rope)

        if cfg.q_lora_rank is None:
            self.q_proj = nn.Linear(hidden_size, self.n_heads * qk_dim, bias=False)
        else:
            self.q_a_proj = nn.Linear(hidden_size, cfg.q_lora_rank, bias=False)
            self.q_a_norm = RMSNorm(cfg.q_lora_rank, norm_eps)
            self.q_b_proj = nn.Linear(cfg.q_lora_rank, self.n_heads * qk_dim, bias=False)
        # One projection yields both the kv latent and the shared rotary key.
        self.kv_a_proj = nn.Linear(hidden_size, self.kv_rank + self.rope_dim, bias=False)
        self.kv_a_norm = RMSNorm(self.kv_rank, norm_eps)
        self.kv_b_proj = nn.Linear(self.kv_rank, self.n_heads * (self.nope_dim + self.v_dim), bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.v_dim, hidden_size, bias=False)
        # QK-Clip bookkeeping: the largest pre-softmax logit per head since the last reset
        # (training forwards only, when measuring is switched on).
        self.measure_max_logit = False
        self.register_buffer("max_logit", torch.full((self.n_heads,), float("-inf")), persistent=False)

    def queries(
        self, x_BTD: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """No-rope and rotated rope parts of the queries: (B, T, H, n), (B, T, H, r)."""
        B, T, _ = x_BTD.shape
        if hasattr(self, "q_proj"):
            q = self.q_proj(x_BTD)
        else:
            q = self.q_b_proj(self.q_a_norm(self.q_a_proj(x_BTD)))
        q_nope, q_rope = q.view(B, T, self.n_heads, self.nope_dim + self.rope_dim).split(
            [self.nope_dim, self.rope_dim], dim=-1
        )
        return q_nope, _as(apply_rope(q_rope, cos, sin), q_nope.dtype)

    def latent(self, x_BTD: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """What the cache keeps per token: the normed kv latent and the rotated shared key, (B, T, c + r)."""
        B, T, _ = x_BTD.shape
        c_kv, k_rope = self.kv_a_proj(x_BTD).split([self.kv_rank, self.rope_dim], dim=-1)
        c_kv = self.kv_a_norm(c_kv)
        k_rope = apply_rope(k_rope.view(B, T, 1, self.rope_dim), cos, sin).view(B, T, self.rope_dim)
        return torch.cat((c_kv, _as(k_rope, c_kv.dtype)), dim=-1)

    def expand(self, latent_BSk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-head keys (B, H, S, n + r) and values (B, H, S, v) from cached latents."""
        B, S, _ = latent_BSk.shape
        H = self.n_heads
        c_kv, k_rope = latent_BSk.split([self.kv_rank, self.rope_dim], dim=-1)
        k_nope, v = (
            self.kv_b_proj(c_kv)
            .view(B, S, H, self.nope_dim + self.v_dim)
            .split([self.nope_dim, self.v_dim], dim=-1)
        )
        k = torch.cat((k_nope, _as(k_rope[:, :, None], k_nope.dtype).expand(B, S, H, self.rope_dim)), dim=-1)
        return k.transpose(1, 2), v.transpose(1, 2)

    def project_qkv(
        self, x_BTD: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values as (B, H, T, n+r), (B, H, T, n+r), (B, H, T, v)."""
        q_nope, q_rope = self.queries(x_BTD, cos, sin)
        k, v = self.expand(self.latent(x_BTD, cos, sin))
        return torch.cat((q_nope, q_rope), dim=-1).transpose(1, 2), k, v

    def forward(
        self,
        x_BTD: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask_BTT: torch.Tensor | None = None,
        cache: LayerCache | None = None,
    ) -> torch.Tensor:
        """Causal self-attention; ``mask_BTT`` (True = may attend) replaces the plain causal mask.

        With ``cache`` (generation), the new tokens' latents are stored in it; the first
        forward (the prompt) attends in the expanded form like the uncached model, later
        ones (decode steps) attend to every cached token through the absorbed form
        (``decode_attention``), with the cache's own padding mask (``mask_BTT`` unused).
        """
        B, T, _ = x_BTD.shape
        if cache is not None and cache.cache.length > 0:
            q_nope, q_rope = self.queries(x_BTD, cos, sin)
            latent_BSk = cache.write(self.latent(x_BTD, cos, sin))
            return self.decode_attention(q_nope, q_rope, latent_BSk, cache.cache.attention_bias(T))
        if cache is None:
            q, k, v = self.project_qkv(x_BTD, cos, sin)
        else:  # the prompt: keep its latents, attend as without a cache
            q_nope, q_rope = self.queries(x_BTD, cos, sin)
            k, v = self.expand(cache.write(self.latent(x_BTD, cos, sin)))
            q = torch.cat((q_nope, q_rope), dim=-1).transpose(1, 2)
        if self.measure_max_logit and self.training:
            self.max_logit = torch.maximum(self.max_logit, head_max_logits(q, k, self.scale, mask_BTT))
        if mask_BTT is not None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask_BTT[:, None], scale=self.scale)
        else:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, self.n_heads * self.v_dim))

    def decode_attention(
        self, q_nope: torch.Tensor, q_rope: torch.Tensor, latent_BSk: torch.Tensor, bias_BTS: torch.Tensor
    ) -> torch.Tensor:
        """Attention of T new tokens over S cached latents with the up-projections absorbed.

        score(h) = q_nope(h) . (W_uk(h) c) + q_rope(h) . k_rope = (W_uk(h)^T q_nope(h)) . c + ...,
        and out(h) = W_uv(h) (sum_s p_s c_s): the per-head keys and values are never formed,
        and all heads share one key/value sequence (the latent), so the scores of every head
        and new token are one batched matmul against the cache.
        """
        B, T, H, _ = q_nope.shape
        c, n = self.kv_rank, self.nope_dim
        w_HXc = self.kv_b_proj.weight.view(H, n + self.v_dim, c)
        # (H, B*T, n) @ (H, n, c): each head's no-rope query moved into the latent space
        q_lat_HMc = torch.bmm(q_nope.permute(2, 0, 1, 3).reshape(H, B * T, n), w_HXc[:, :n])
        q_BHTk = torch.cat(
            (q_lat_HMc.view(H, B, T, c).transpose(0, 1), _as(q_rope.transpose(1, 2), q_lat_HMc.dtype)), dim=-1
        )
        S = latent_BSk.shape[1]
        # One new token: its (B, 1, S) mask broadcasts over the heads as it is.
        bias = bias_BTS if T == 1 else bias_BTS[:, None].expand(B, H, T, S).reshape(B, H * T, S)
        scores_BMS = torch.baddbmm(
            _as(bias, q_BHTk.dtype),
            q_BHTk.reshape(B, H * T, -1),
            latent_BSk.transpose(1, 2),
            alpha=self.scale,
        )
        p_BMS = _as(torch.softmax(_as(scores_BMS, torch.float32), dim=-1), latent_BSk.dtype)
        o_lat_BMc = torch.bmm(p_BMS, latent_BSk[..., :c])
        # (H, B*T, c) @ (H, c, v): back from the latent to each head's value space
        o_HMv = torch.bmm(
            o_lat_BMc.view(B, H, T, c).transpose(0, 1).reshape(H, B * T, c), w_HXc[:, n:].transpose(1, 2)
        )
        o_BTX = o_HMv.view(H, B, T, self.v_dim).permute(1, 2, 0, 3).reshape(B, T, H * self.v_dim)
        return self.o_proj(o_BTX)

    @torch.no_grad()
    def clip_heads(self, gamma_H: torch.Tensor) -> None:
        """QK-Clip for MLA: per head, no-rope query and key rows by sqrt(gamma), rotary query rows
        by gamma; the rotary key (shared by all heads) is left alone. gamma = 1 changes nothing."""
        root_H1 = gamma_H.sqrt()[:, None]
        q_w = (self.q_proj if hasattr(self, "q_proj") else self.q_b_proj).weight
        # One scale per output row (head-major rows), applied in place, sharded weights included.
        q_HX = torch.cat([root_H1.expand(-1, self.nope_dim), gamma_H[:, None].expand(-1, self.rope_dim)], 1)
        scale_rows_(q_w, q_HX.flatten())
        kv_HX = torch.cat(
            [root_H1.expand(-1, self.nope_dim), torch.ones_like(root_H1).expand(-1, self.v_dim)], 1
        )
        scale_rows_(self.kv_b_proj.weight, kv_HX.flatten())


def _as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t.to(dtype)`` without a dispatcher call when it is one already (a decode step has dozens)."""
    return t if t.dtype == dtype else t.to(dtype)


class LayerCache:
    """One layer's handle on a ``LatentCache``."""

    def __init__(self, cache: LatentCache, layer: int) -> None:
        self.cache, self.layer = cache, layer

    def write(self, latent_BTk: torch.Tensor) -> torch.Tensor:
        return self.cache.write(self.layer, latent_BTk)


@torch.no_grad()
def head_max_logits(
    q_BHTd: torch.Tensor,
    k_BHTd: torch.Tensor,
    scale: float,
    mask_BTT: torch.Tensor | None = None,
    chunk: int = 1 << 24,
) -> torch.Tensor:
    """Largest causal pre-softmax logit q.k * scale per head, in fp32, in query chunks (bounded memory)."""
    B, H, T, _ = q_BHTd.shape
    q, k = q_BHTd.float(), k_BHTd.float()
    rows = max(1, chunk // max(1, B * H * T))
    out = torch.full((H,), float("-inf"), device=q.device)
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    for start in range(0, T, rows):
        logits = torch.matmul(q[:, :, start : start + rows], k.transpose(-1, -2)) * scale
        allowed = causal[start : start + rows][None, None]
        if mask_BTT is not None:
            allowed = allowed & mask_BTT[:, None, start : start + rows]
        out = torch.maximum(out, logits.masked_fill(~allowed, float("-inf")).amax(dim=(0, 2, 3)))
    return out
