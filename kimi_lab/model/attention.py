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

    def project_qkv(
        self, x_BTD: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values as (B, H, T, n+r), (B, H, T, n+r), (B, H, T, v)."""
        B, T, _ = x_BTD.shape
        H = self.n_heads
        if hasattr(self, "q_proj"):
            q = self.q_proj(x_BTD)
        else:
            q = self.q_b_proj(self.q_a_norm(self.q_a_proj(x_BTD)))
        q_BTHk = q.view(B, T, H, self.nope_dim + self.rope_dim)
        q_nope, q_rope = q_BTHk.split([self.nope_dim, self.rope_dim], dim=-1)

        c_kv, k_rope = self.kv_a_proj(x_BTD).split([self.kv_rank, self.rope_dim], dim=-1)
        kv_BTHx = self.kv_b_proj(self.kv_a_norm(c_kv)).view(B, T, H, self.nope_dim + self.v_dim)
        k_nope, v = kv_BTHx.split([self.nope_dim, self.v_dim], dim=-1)

        q_rope = apply_rope(q_rope, cos, sin)
        k_rope_BT1r = apply_rope(k_rope.view(B, T, 1, self.rope_dim), cos, sin)
        q = torch.cat((q_nope, q_rope.to(q_nope.dtype)), dim=-1)
        k = torch.cat((k_nope, k_rope_BT1r.to(k_nope.dtype).expand(B, T, H, self.rope_dim)), dim=-1)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def forward(
        self,
        x_BTD: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask_BTT: torch.Tensor | None = None,
        cache: LayerKV | None = None,
    ) -> torch.Tensor:
        """Causal self-attention; ``mask_BTT`` (True = may attend) replaces the plain causal mask.

        With ``cache`` (generation), the new tokens attend to the cached ones as well and
        are appended to it; ``mask_BTT`` is then (B, T, past + T), or None for one new token.
        """
        B, T, _ = x_BTD.shape
        q, k, v = self.project_qkv(x_BTD, cos, sin)
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.append(k, v)
        if self.measure_max_logit and self.training and past == 0:
            self.max_logit = torch.maximum(self.max_logit, head_max_logits(q, k, self.scale, mask_BTT))
        if mask_BTT is not None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask_BTT[:, None], scale=self.scale)
        elif past == 0:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
        else:
            if T != 1:
                raise ValueError("several new tokens after a cache need an explicit mask")
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)  # one query sees all keys
        return self.o_proj(out.transpose(1, 2).reshape(B, T, self.n_heads * self.v_dim))

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


class LayerKV:
    """One layer's cached keys (B, H, T, n + r) and values (B, H, T, v) during generation.

    The per-head keys and values are cached as attention uses them (simple and fast at
    lab scale); DeepSeek's inference caches the latent ``c_kv`` and rotary key instead.
    """

    def __init__(self) -> None:
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.shape[2]

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.k is not None and self.v is not None:
            k, v = torch.cat((self.k, k), dim=2), torch.cat((self.v, v), dim=2)
        self.k, self.v = k, v
        return k, v

    def select(self, rows: torch.Tensor) -> None:
        """Keep only these batch rows (finished sequences dropped)."""
        if self.k is not None and self.v is not None:
            self.k, self.v = self.k[rows], self.v[rows]


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
