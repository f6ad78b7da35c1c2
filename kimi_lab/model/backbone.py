"""The K2 / DeepSeek-V3 decoder: MLA attention, ``first_k_dense`` SwiGLU layers, then MoE layers.

Pre-norm residual blocks; RMSNorm everywhere; untied input embedding and LM head.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from kimi_lab.config.schema import ModelConfig
from kimi_lab.model.attention import LayerCache, MultiHeadLatentAttention
from kimi_lab.model.kv_cache import LatentCache
from kimi_lab.model.mlp import SwiGLU
from kimi_lab.model.moe.layer import MoEAux, MoELayer, resolve_backend
from kimi_lab.model.norm import RMSNorm
from kimi_lab.model.rope import RotaryEmbedding

log = logging.getLogger(__name__)


@dataclass
class LMOutput:
    logits: torch.Tensor | None  # (B, T, V), None when only hidden states were asked for
    hidden: torch.Tensor  # (B, T, D) after the final norm (T: the last logits_to_keep when given)
    aux_loss: torch.Tensor  # scalar: the weighted router losses of all MoE layers
    router_metrics: dict[str, torch.Tensor] = field(default_factory=dict)  # detached, layer means


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int, moe_backend: str) -> None:
        super().__init__()
        D = cfg.hidden_size
        self.attn_norm = RMSNorm(D, cfg.norm_eps)
        self.attn = MultiHeadLatentAttention(D, cfg.attention, cfg.norm_eps)
        self.ffn_norm = RMSNorm(D, cfg.norm_eps)
        self.is_moe = layer_idx >= cfg.first_k_dense
        self.ffn: nn.Module
        if self.is_moe:
            self.ffn = MoELayer(D, cfg.moe, moe_backend, cfg.init_std)
        else:
            self.ffn = SwiGLU(D, cfg.dense_ffn_dim)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None = None,
        cache: LayerCache | None = None,
        real_BT: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, MoEAux | None]:
        x = x + self.attn(self.attn_norm(x), cos, sin, mask, cache)
        if self.is_moe:
            y, aux = self.ffn(self.ffn_norm(x), real_BT)
            return x + y, aux
        return x + self.ffn(self.ffn_norm(x)), None


class K2Model(nn.Module):
    """Decoder-only K2 language model with its LM head."""

    def __init__(self, cfg: ModelConfig, device_type: str = "cpu") -> None:
        super().__init__()
        self.cfg = cfg
        backend, why = resolve_backend(cfg.moe.backend, device_type)
        self.moe_backend = backend
        if cfg.first_k_dense < cfg.n_layers:
            log.info("MoE experts backend: %s (%s)", backend, why)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.rope = RotaryEmbedding(cfg.attention.qk_rope_head_dim, cfg.attention.rope)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i, backend) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self._init_dense_weights()

    def _init_dense_weights(self) -> None:
        # Router and expert weights are initialised by their own modules.
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=self.cfg.init_std)

    def new_cache(self, max_len: int) -> LatentCache:
        """An empty decode cache for up to ``max_len`` tokens per row (prompt + new tokens)."""
        a = self.cfg.attention
        return LatentCache(len(self.layers), a.kv_lora_rank, a.qk_rope_head_dim, max_len)

    @property
    def moe_layers(self) -> list[MoELayer]:
        return [layer.ffn for layer in self.layers if isinstance(layer.ffn, MoELayer)]

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        compute_logits: bool = True,
        cache: LatentCache | None = None,
        logits_to_keep: int = 0,
        token_mask: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
    ) -> LMOutput:
        """``input_ids`` (B, T) or ``inputs_embeds`` (B, T, D) (e.g. with vision embeddings merged in).

        ``attention_mask`` (B, T), 1 for real tokens and 0 for padding, as transformers takes it.
        With ``cache`` (see ``new_cache``) the new tokens attend to the cached ones too and are
        added to it; the mask then covers the new tokens (B, T) or, as before, the cached ones
        too (B, past + T; only the new columns are read: the cache remembers the old ones).
        ``logits_to_keep`` > 0 computes logits for the last that many positions only.
        ``token_mask`` (B, T) marks the real tokens for the routers' load counts only (packed
        pre-training pads without masking attention); by default it is the new tokens' part of
        ``attention_mask``. ``segment_ids`` (B, T) fences packed documents (SFT's conversations):
        a token attends only to earlier tokens of its own segment (pass ``positions`` restarting
        at each segment too); not with ``cache``.
        """
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("K2Model needs input_ids or inputs_embeds")
            inputs_embeds = self.embed(input_ids)
        x = inputs_embeds
        B, T, _ = x.shape
        past = cache.length if cache is not None else 0
        if positions is None:
            positions = torch.arange(past, past + T, device=x.device).expand(B, T)
        cos, sin = self.rope(positions)
        mask = None
        if cache is not None:
            keep = None if attention_mask is None else attention_mask[:, -T:]
            cache.begin(T, keep, B, x.device)
            if past == 0:
                mask = causal_padding_mask(keep, T)
        else:
            mask = causal_padding_mask(attention_mask, T)
            if segment_ids is not None:
                fence = segment_mask(segment_ids)
                mask = fence if mask is None else mask & fence
        if token_mask is None and attention_mask is not None:
            token_mask = attention_mask[:, -T:].bool()
        aux_loss = x.new_zeros((), dtype=torch.float32)
        seq_terms, z_terms = [], []
        for i, layer in enumerate(self.layers):
            x, aux = layer(x, cos, sin, mask, LayerCache(cache, i) if cache is not None else None, token_mask)
            if aux is not None and self.training:  # router losses exist in training only
                aux_loss = aux_loss + aux.loss
                seq_terms.append(aux.seq_balance)
                z_terms.append(aux.z_loss)
        if cache is not None:
            cache.advance(T)
        hidden = self.norm(x if logits_to_keep <= 0 else x[:, -logits_to_keep:])
        logits = self.lm_head(hidden) if compute_logits else None
        metrics: dict[str, torch.Tensor] = {}
        if seq_terms:
            metrics = {
                "seq_balance_loss": torch.stack(seq_terms).mean(),
                "router_z_loss": torch.stack(z_terms).mean(),
            }
        return LMOutput(logits, hidden, aux_loss, metrics)


def segment_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """(B, T, T) bool "may attend" mask: causal, and only within a token's own segment."""
    T = segment_ids.shape[-1]
    causal = torch.ones(T, T, dtype=torch.bool, device=segment_ids.device).tril()
    return causal[None] & (segment_ids[:, :, None] == segment_ids[:, None, :])


def causal_padding_mask(attention_mask: torch.Tensor | None, T: int) -> torch.Tensor | None:
    """(B, T, T) bool "may attend" mask for T tokens with padding, or None where plain causal
    attention is exact (no mask, or no padding)."""
    if attention_mask is None or bool(attention_mask.all()):
        return None
    keep = attention_mask.bool()
    if keep.shape[-1] != T:
        raise ValueError(f"attention_mask covers {keep.shape[-1]} tokens, expected {T}")
    causal = torch.ones(T, T, dtype=torch.bool, device=keep.device).tril()
    # A padded query still attends to itself, so no row is empty (no NaN); its output is unused.
    return (causal[None] & keep[:, None, :]) | torch.eye(T, dtype=torch.bool, device=keep.device)[None]
