"""Parameter counts: total, and active per token (routed experts count top_k / n_routed)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from kimi_lab.config.schema import ModelConfig, MoEBackend


@dataclass
class ParamCount:
    total: int
    active: int
    embedding: int  # input embedding + LM head
    attention: int
    dense_ffn: int
    routed_experts: int
    shared_experts: int
    router: int
    norms: int
    vision_tower: int = 0
    projector: int = 0

    @property
    def language_model(self) -> int:
        return self.total - self.vision_tower - self.projector

    @property
    def language_model_active(self) -> int:
        return self.active - self.vision_tower - self.projector

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def _numel(module: torch.nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def count_params(cfg: ModelConfig) -> ParamCount:
    """Build the model on the meta device (no memory, any size) and count its tensors.

    Active = everything a text token passes through: all but the routed experts, plus
    top_k / n_routed of them; the vision tower and projector count whole (dense).
    """
    from kimi_lab.model.moe.layer import MoELayer
    from kimi_lab.model.multimodal import KimiK25

    cfg = replace(cfg, moe=replace(cfg.moe, backend=MoEBackend.torch))
    with torch.device("meta"):
        full = KimiK25(cfg, device_type="meta")
    model = full.language_model

    c = dict(embedding=0, attention=0, dense_ffn=0, routed_experts=0, shared_experts=0, router=0, norms=0)
    c["embedding"] = _numel(model.embed) + (0 if cfg.tie_embeddings else _numel(model.lm_head))
    c["norms"] = _numel(model.norm)
    for layer in model.layers:
        c["attention"] += _numel(layer.attn)
        c["norms"] += _numel(layer.attn_norm) + _numel(layer.ffn_norm)
        if isinstance(layer.ffn, MoELayer):
            c["router"] += _numel(layer.ffn.router)
            c["routed_experts"] += _numel(layer.ffn.experts)
            c["shared_experts"] += _numel(layer.ffn.shared)
        else:
            c["dense_ffn"] += _numel(layer.ffn)
    c["vision_tower"], c["projector"] = _numel(full.vision_tower), _numel(full.projector)
    total = sum(c.values())
    assert total == _numel(full), "every parameter must fall in exactly one bucket"
    routed = c["routed_experts"]
    active = total - routed + routed * cfg.moe.top_k // cfg.moe.n_routed_experts
    return ParamCount(total=total, active=active, **c)


def count_params_closed_form(cfg: ModelConfig) -> tuple[int, int]:
    """(total, active) of the language model from the config alone; tests check it against ``count_params``."""
    a, m = cfg.attention, cfg.moe
    D, H = cfg.hidden_size, a.n_heads
    qk = a.qk_nope_head_dim + a.qk_rope_head_dim
    q = D * H * qk if a.q_lora_rank is None else D * a.q_lora_rank + a.q_lora_rank + a.q_lora_rank * H * qk
    kv = (
        D * (a.kv_lora_rank + a.qk_rope_head_dim)
        + a.kv_lora_rank
        + a.kv_lora_rank * H * (a.qk_nope_head_dim + a.v_head_dim)
    )
    attn = q + kv + H * a.v_head_dim * D + 2 * D  # + the two block norms
    n_moe = cfg.n_layers - cfg.first_k_dense
    expert = 3 * D * m.expert_ffn_dim
    dense = cfg.first_k_dense * 3 * D * cfg.dense_ffn_dim
    moe_fixed = n_moe * (m.n_routed_experts * D + m.n_shared_experts * expert)
    embed = cfg.vocab_size * D * (1 if cfg.tie_embeddings else 2) + D
    fixed = cfg.n_layers * attn + dense + moe_fixed + embed
    total = fixed + n_moe * m.n_routed_experts * expert
    active = fixed + n_moe * m.top_k * expert
    return total, active


def decode_cache(cfg: ModelConfig) -> dict[str, int]:
    """What one token costs in the decode cache (``LatentCache``: MLA's latent, kv_lora_rank +
    qk_rope_head_dim values per layer), against caching every head's expanded key and value."""
    from kimi_lab.model.kv_cache import LatentCache

    a = cfg.attention
    cache = LatentCache(cfg.n_layers, a.kv_lora_rank, a.qk_rope_head_dim, max_len=0)
    return {
        "values_per_token_per_layer": cache.values_per_token,
        "expanded_values_per_token_per_layer": a.n_heads
        * (a.qk_nope_head_dim + a.qk_rope_head_dim + a.v_head_dim),
        "layers": cfg.n_layers,
        "bytes_per_token_bf16": cache.bytes_per_token(torch.bfloat16),
        "bytes_per_token_fp32": cache.bytes_per_token(torch.float32),
    }
