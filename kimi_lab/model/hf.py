"""Conversion between kimi_lab's KimiK25 and transformers' ``kimi_k25`` / ``deepseek_v3``.

The K2 language model *is* a DeepSeek-V3 model (K2.5's ``text_config``); with a
vision tower the whole is a ``Kimi_K25ForConditionalGeneration``. Layouts that
differ: kimi_lab fuses the dense and shared SwiGLU gate+up into one ``w13``
matrix and keeps routed experts as ``w1``/``w3``/``w2`` (E, F, D), where
transformers has ``gate_up_proj`` (E, 2F, D) and ``down_proj`` (E, D, F); the
ViT patch embedding is a Linear here and a Conv2d there. RoPE runs in the
"rotate half" layout, so exports say ``rope_interleave=False`` and imports of
interleaved checkpoints (DeepSeek's and Moonshot's own) permute the rotary rows.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from kimi_lab.config.schema import (
    AttentionConfig,
    ModelConfig,
    MoEConfig,
    RopeConfig,
    RopeScaling,
    VisionConfig,
)
from kimi_lab.errors import ConfigError

Tensors = dict[str, torch.Tensor]

ATTN_NAMES = {
    "q_proj": "q_proj",
    "q_a_proj": "q_a_proj",
    "q_a_norm": "q_a_layernorm",
    "q_b_proj": "q_b_proj",
    "kv_a_proj": "kv_a_proj_with_mqa",
    "kv_a_norm": "kv_a_layernorm",
    "kv_b_proj": "kv_b_proj",
    "o_proj": "o_proj",
}


# ------------------------------------------------------------------------- configs
def deepseek_v3_config_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    a, m, r = cfg.attention, cfg.moe, cfg.attention.rope
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": r.theta}
    if r.scaling == RopeScaling.yarn:
        rope = {
            "rope_type": "yarn",
            "rope_theta": r.theta,
            "factor": r.factor,
            "original_max_position_embeddings": r.original_max_seq_len,
            "beta_fast": r.beta_fast,
            "beta_slow": r.beta_slow,
            "mscale": r.mscale,
            "mscale_all_dim": r.mscale_all_dim,
        }
    return {
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.dense_ffn_dim,
        "moe_intermediate_size": m.expert_ffn_dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": a.n_heads,
        "num_key_value_heads": a.n_heads,
        "n_shared_experts": m.n_shared_experts,
        "n_routed_experts": m.n_routed_experts,
        "routed_scaling_factor": m.routed_scaling_factor,
        "kv_lora_rank": a.kv_lora_rank,
        "q_lora_rank": a.q_lora_rank,
        "qk_rope_head_dim": a.qk_rope_head_dim,
        "v_head_dim": a.v_head_dim,
        "qk_nope_head_dim": a.qk_nope_head_dim,
        "n_group": 1,
        "topk_group": 1,
        "num_experts_per_tok": m.top_k,
        "first_k_dense_replace": cfg.first_k_dense,
        "norm_topk_prob": True,
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "initializer_range": cfg.init_std,
        "tie_word_embeddings": cfg.tie_embeddings,
        "rope_parameters": rope,
        "rope_interleave": False,
        "attention_bias": False,
    }


def kimi_k25_config_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    v = cfg.vision
    assert v is not None
    return {
        "text_config": {"model_type": "deepseek_v3", **deepseek_v3_config_kwargs(cfg)},
        "vision_config": {
            "patch_size": v.patch_size,
            "pos_emb_height": v.pos_emb_size,
            "pos_emb_width": v.pos_emb_size,
            "pos_emb_time": v.pos_emb_time,
            "num_attention_heads": v.n_heads,
            "num_hidden_layers": v.n_layers,
            "hidden_size": v.hidden_size,
            "intermediate_size": v.ffn_dim,
            "hidden_act": "gelu_pytorch_tanh",
            "merge_kernel_size": [v.merge_size, v.merge_size],
            "rope_parameters": {"rope_type": "axial", "rope_theta": v.rope_theta},
        },
        "projection_hidden_size": v.hidden_size,
        "projection_layer_norm_eps": v.norm_eps,
        "image_token_id": v.image_token_id,
        "video_token_id": v.video_token_id,
        "tie_word_embeddings": cfg.tie_embeddings,
    }


def model_config_from_hf(hf_config: Any, name: str = "imported") -> tuple[ModelConfig, bool]:
    """(ModelConfig, rope_interleave) from a ``DeepseekV3Config`` or ``Kimi_K25Config``."""
    text = getattr(hf_config, "text_config", None) or hf_config
    c = text
    if (getattr(c, "n_group", 1) or 1) != 1 or (getattr(c, "topk_group", 1) or 1) != 1:
        raise ConfigError(
            f"group-limited routing (n_group={c.n_group}, topk_group={c.topk_group}) is not supported; K2 uses 1/1"
        )
    if getattr(c, "norm_topk_prob", True) is not True:
        raise ConfigError("norm_topk_prob=False is not supported (K2 renormalises the chosen scores)")
    rp = dict(getattr(c, "rope_parameters", None) or {"rope_type": "default", "rope_theta": 10000.0})
    rope = RopeConfig(theta=float(rp.get("rope_theta", 10000.0)))
    if rp.get("rope_type", "default") == "yarn":
        rope = RopeConfig(
            theta=float(rp["rope_theta"]),
            scaling=RopeScaling.yarn,
            factor=float(rp["factor"]),
            original_max_seq_len=int(rp["original_max_position_embeddings"]),
            beta_fast=float(rp.get("beta_fast") or 32),
            beta_slow=float(rp.get("beta_slow") or 1),
            mscale=float(rp.get("mscale") or 0.0),
            mscale_all_dim=float(rp.get("mscale_all_dim") or 0.0),
        )
    elif rp.get("rope_type", "default") != "default":
        raise ConfigError(f"rope_type={rp.get('rope_type')!r} is not supported (default or yarn)")
    cfg = ModelConfig(
        name=name,
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        n_layers=c.num_hidden_layers,
        first_k_dense=c.first_k_dense_replace,
        dense_ffn_dim=c.intermediate_size,
        max_seq_len=c.max_position_embeddings,
        norm_eps=c.rms_norm_eps,
        init_std=getattr(c, "initializer_range", 0.02),
        tie_embeddings=bool(
            getattr(hf_config, "tie_word_embeddings", False) or getattr(c, "tie_word_embeddings", False)
        ),
        attention=AttentionConfig(
            n_heads=c.num_attention_heads,
            q_lora_rank=c.q_lora_rank,
            kv_lora_rank=c.kv_lora_rank,
            qk_nope_head_dim=c.qk_nope_head_dim,
            qk_rope_head_dim=c.qk_rope_head_dim,
            v_head_dim=c.v_head_dim,
            rope=rope,
        ),
        moe=MoEConfig(
            n_routed_experts=c.n_routed_experts,
            n_shared_experts=c.n_shared_experts,
            top_k=c.num_experts_per_tok,
            expert_ffn_dim=c.moe_intermediate_size,
            routed_scaling_factor=float(c.routed_scaling_factor),
        ),
    )
    vc = getattr(hf_config, "vision_config", None)
    if vc is not None:
        kh, kw = vc.merge_kernel_size
        if kh != kw or vc.pos_emb_height != vc.pos_emb_width:
            raise ConfigError("only square merge kernels and position grids are supported")
        if vc.hidden_act != "gelu_pytorch_tanh":
            raise ConfigError(f"vision hidden_act={vc.hidden_act!r} is not supported (gelu_pytorch_tanh)")
        cfg = replace(
            cfg,
            vision=VisionConfig(
                hidden_size=vc.hidden_size,
                n_layers=vc.num_hidden_layers,
                n_heads=vc.num_attention_heads,
                ffn_dim=vc.intermediate_size,
                patch_size=vc.patch_size,
                pos_emb_size=vc.pos_emb_height,
                pos_emb_time=vc.pos_emb_time,
                merge_size=kh,
                rope_theta=float((vc.rope_parameters or {}).get("rope_theta", 10000.0)),
                norm_eps=hf_config.projection_layer_norm_eps,
                image_token_id=hf_config.image_token_id,
                video_token_id=hf_config.video_token_id,
            ),
        )
    return cfg, bool(getattr(c, "rope_interleave", False))


# ----------------------------------------------------------------- language model
def _split_swiglu(state: Tensors, src: str, dst: str) -> Tensors:
    gate, up = state[src + "w13.weight"].chunk(2, dim=0)
    return {
        dst + "gate_proj.weight": gate,
        dst + "up_proj.weight": up,
        dst + "down_proj.weight": state[src + "w2.weight"],
    }


def lm_to_hf(state: Tensors, cfg: ModelConfig, src: str, dst: str) -> Tensors:
    """K2Model tensors under ``src`` -> DeepseekV3Model tensors under ``dst`` (lm_head not included)."""
    out = {
        dst + "embed_tokens.weight": state[src + "embed.weight"],
        dst + "norm.weight": state[src + "norm.weight"],
    }
    for i in range(cfg.n_layers):
        s, d = f"{src}layers.{i}.", f"{dst}layers.{i}."
        out[d + "input_layernorm.weight"] = state[s + "attn_norm.weight"]
        out[d + "post_attention_layernorm.weight"] = state[s + "ffn_norm.weight"]
        for ours, theirs in ATTN_NAMES.items():
            if f"{s}attn.{ours}.weight" in state:
                out[f"{d}self_attn.{theirs}.weight"] = state[f"{s}attn.{ours}.weight"]
        if i < cfg.first_k_dense:
            out.update(_split_swiglu(state, s + "ffn.", d + "mlp."))
            continue
        out[d + "mlp.gate.weight"] = state[s + "ffn.router.weight"]
        out[d + "mlp.gate.e_score_correction_bias"] = state[s + "ffn.router.expert_bias"]
        w1, w3, w2 = (state[f"{s}ffn.experts.{n}"] for n in ("w1", "w3", "w2"))
        out[d + "mlp.experts.gate_up_proj"] = torch.cat((w1, w3), dim=1)
        out[d + "mlp.experts.down_proj"] = w2.transpose(1, 2).contiguous()
        if cfg.moe.n_shared_experts > 0:
            out.update(_split_swiglu(state, s + "ffn.shared.", d + "mlp.shared_experts."))
    return out


def _rope_rows_deinterleave(w: torch.Tensor, n_heads: int, head_dim: int, rope_dim: int) -> torch.Tensor:
    """Rows of each head's rotary part from (x0, x1), (x2, x3), ... pairs to rotate-half order."""
    w = w.view(n_heads, head_dim, -1)
    nope = head_dim - rope_dim
    rope = w[:, nope:]
    rope = torch.cat((rope[:, 0::2], rope[:, 1::2]), dim=1)
    return torch.cat((w[:, :nope], rope), dim=1).reshape(n_heads * head_dim, -1)


def lm_from_hf(hf: Tensors, cfg: ModelConfig, src: str, dst: str, rope_interleave: bool) -> Tensors:
    """DeepseekV3Model tensors under ``src`` -> K2Model tensors under ``dst``."""
    a = cfg.attention
    qk = a.qk_nope_head_dim + a.qk_rope_head_dim
    out = {
        dst + "embed.weight": hf[src + "embed_tokens.weight"],
        dst + "norm.weight": hf[src + "norm.weight"],
    }
    for i in range(cfg.n_layers):
        s, d = f"{src}layers.{i}.", f"{dst}layers.{i}."
        out[d + "attn_norm.weight"] = hf[s + "input_layernorm.weight"]
        out[d + "ffn_norm.weight"] = hf[s + "post_attention_layernorm.weight"]
        for ours, theirs in ATTN_NAMES.items():
            key = f"{s}self_attn.{theirs}.weight"
            if key not in hf:
                continue
            w = hf[key]
            if rope_interleave and theirs in ("q_proj", "q_b_proj"):
                w = _rope_rows_deinterleave(w, a.n_heads, qk, a.qk_rope_head_dim)
            elif rope_interleave and theirs == "kv_a_proj_with_mqa":
                w = _rope_rows_deinterleave(w, 1, a.kv_lora_rank + a.qk_rope_head_dim, a.qk_rope_head_dim)
            out[f"{d}attn.{ours}.weight"] = w
        if i < cfg.first_k_dense:
            out.update(_fuse_swiglu(hf, s + "mlp.", d + "ffn."))
            continue
        out[d + "ffn.router.weight"] = hf[s + "mlp.gate.weight"]
        out[d + "ffn.router.expert_bias"] = hf.get(
            s + "mlp.gate.e_score_correction_bias", torch.zeros(cfg.moe.n_routed_experts)
        )
        w1, w3 = hf[s + "mlp.experts.gate_up_proj"].chunk(2, dim=1)
        out[d + "ffn.experts.w1"], out[d + "ffn.experts.w3"] = w1.contiguous(), w3.contiguous()
        out[d + "ffn.experts.w2"] = hf[s + "mlp.experts.down_proj"].transpose(1, 2).contiguous()
        if cfg.moe.n_shared_experts > 0:
            out.update(_fuse_swiglu(hf, s + "mlp.shared_experts.", d + "ffn.shared."))
    return out


def _fuse_swiglu(hf: Tensors, src: str, dst: str) -> Tensors:
    w13 = torch.cat((hf[src + "gate_proj.weight"], hf[src + "up_proj.weight"]), dim=0)
    return {dst + "w13.weight": w13, dst + "w2.weight": hf[src + "down_proj.weight"]}


# -------------------------------------------------------------------------- vision
VISION_LAYER = {
    "norm1": "norm1",
    "norm2": "norm2",
    "attn.q_proj": "attn.q_proj",
    "attn.k_proj": "attn.k_proj",
    "attn.v_proj": "attn.v_proj",
    "attn.proj": "attn.proj",
    "fc1": "mlp.fc1",
    "fc2": "mlp.fc2",
}
PROJECTOR = {"pre_norm": "pre_norm", "in_proj": "in_proj", "out_proj": "out_proj"}


def _vision_pairs(v: VisionConfig) -> list[tuple[str, str]]:
    """(kimi_lab key, kimi_k25 key) for every vision tensor mapped 1:1."""
    pairs = [
        ("vision_tower.pos_emb", "model.vision_tower.patch_embed.pos_emb.position_embeddings"),
        ("vision_tower.patch_embed.bias", "model.vision_tower.patch_embed.proj.bias"),
    ]
    for suffix in ("weight", "bias"):
        pairs.append((f"vision_tower.final_norm.{suffix}", f"model.vision_tower.final_layernorm.{suffix}"))
        for i in range(v.n_layers):
            for ours, theirs in VISION_LAYER.items():
                pairs.append(
                    (
                        f"vision_tower.layers.{i}.{ours}.{suffix}",
                        f"model.vision_tower.layers.{i}.{theirs}.{suffix}",
                    )
                )
        for ours, theirs in PROJECTOR.items():
            pairs.append((f"projector.{ours}.{suffix}", f"model.mm_projector.{theirs}.{suffix}"))
    return pairs


def vision_to_hf(state: Tensors, v: VisionConfig) -> Tensors:
    out = {theirs: state[ours] for ours, theirs in _vision_pairs(v)}
    p = v.patch_size
    out["model.vision_tower.patch_embed.proj.weight"] = state["vision_tower.patch_embed.weight"].view(
        -1, 3, p, p
    )
    return out


def vision_from_hf(hf: Tensors, v: VisionConfig) -> Tensors:
    out = {ours: hf[theirs] for ours, theirs in _vision_pairs(v)}
    out["vision_tower.patch_embed.weight"] = hf["model.vision_tower.patch_embed.proj.weight"].flatten(1)
    return out


# ---------------------------------------------------------------------- whole model
def to_hf_state_dict(state: Tensors, cfg: ModelConfig) -> Tensors:
    """KimiK25 state dict -> ``Kimi_K25ForConditionalGeneration`` (or ``DeepseekV3ForCausalLM``) names."""
    if cfg.vision is None:
        out = lm_to_hf(state, cfg, "language_model.", "model.")
    else:
        out = lm_to_hf(state, cfg, "language_model.", "model.language_model.")
        out.update(vision_to_hf(state, cfg.vision))
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = state["language_model.lm_head.weight"]
    return out


def from_hf_state_dict(hf: Tensors, cfg: ModelConfig, rope_interleave: bool) -> Tensors:
    if cfg.vision is None:
        out = lm_from_hf(hf, cfg, "model.", "language_model.", rope_interleave)
    else:
        out = lm_from_hf(hf, cfg, "model.language_model.", "language_model.", rope_interleave)
        out.update(vision_from_hf(hf, cfg.vision))
    head = hf.get("lm_head.weight", out["language_model.embed.weight"])
    out["language_model.lm_head.weight"] = head
    return out


def build_transformers(cfg: ModelConfig) -> torch.nn.Module:
    """An empty transformers model of the same architecture (fp32, eager attention)."""
    try:
        from transformers import (
            DeepseekV3Config,
            DeepseekV3ForCausalLM,
            Kimi_K25Config,
            Kimi_K25ForConditionalGeneration,
        )
    except ImportError as exn:
        raise ConfigError(
            f"Hugging Face conversion needs transformers>=5: pip install -e '.[hf]' ({exn})"
        ) from None
    if cfg.vision is None:
        hf_cfg = DeepseekV3Config(**deepseek_v3_config_kwargs(cfg))
        model_cls: Any = DeepseekV3ForCausalLM
    else:
        hf_cfg = Kimi_K25Config(**kimi_k25_config_kwargs(cfg))
        model_cls = Kimi_K25ForConditionalGeneration
    hf_cfg._attn_implementation = "eager"
    return model_cls(hf_cfg)


def to_transformers(model: torch.nn.Module) -> torch.nn.Module:
    """An equivalent transformers model with this KimiK25's weights (fp32, eval)."""
    cfg: ModelConfig = model.cfg  # type: ignore[assignment]
    hf = build_transformers(cfg)
    state = {k: v.detach().float() for k, v in model.state_dict().items()}
    missing, unexpected = hf.load_state_dict(to_hf_state_dict(state, cfg), strict=False)
    missing = [k for k in missing if not (cfg.tie_embeddings and k == "lm_head.weight")]
    if unexpected or missing:
        raise RuntimeError(f"conversion mismatch: missing={missing} unexpected={unexpected}")
    return hf.eval()


def from_transformers(hf: torch.nn.Module, name: str = "imported") -> torch.nn.Module:
    """A KimiK25 with the weights of a transformers ``kimi_k25`` or ``deepseek_v3`` model."""
    from kimi_lab.model.multimodal import KimiK25

    cfg, interleave = model_config_from_hf(hf.config, name)
    model = KimiK25(cfg)
    state = {k: v.detach().float() for k, v in hf.state_dict().items()}
    model.load_state_dict(from_hf_state_dict(state, cfg, interleave), strict=True)
    return model.eval()
