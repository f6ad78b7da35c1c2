"""Conversion between kimi_lab's K2 language model and transformers' ``deepseek_v3`` format.

The K2 language model *is* a DeepSeek-V3 model (Kimi K2.5's ``text_config``), so
this mapping is both the export format and the oracle for parity tests.
kimi_lab stores the dense and shared SwiGLU gate+up as one ``w13`` matrix and the
routed experts as separate ``w1``/``w3``/``w2`` (E, F, D); transformers stores
``gate_up_proj`` (E, 2F, D) and ``down_proj`` (E, D, F). RoPE uses the
"rotate half" layout here, so configs are exported with ``rope_interleave=False``.
"""

from __future__ import annotations

from typing import Any

import torch

from kimi_lab.config.schema import ModelConfig, RopeScaling


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
        "tie_word_embeddings": cfg.tie_embeddings,
        "rope_parameters": rope,
        "rope_interleave": False,
        "attention_bias": False,
    }


def to_deepseek_v3_state_dict(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Map a ``K2Model`` state dict to ``DeepseekV3ForCausalLM`` names and layouts."""
    out: dict[str, torch.Tensor] = {
        "model.embed_tokens.weight": state["embed.weight"],
        "model.norm.weight": state["norm.weight"],
        "lm_head.weight": state["lm_head.weight"],
    }
    attn_names = {
        "q_proj": "q_proj",
        "q_a_proj": "q_a_proj",
        "q_a_norm": "q_a_layernorm",
        "q_b_proj": "q_b_proj",
        "kv_a_proj": "kv_a_proj_with_mqa",
        "kv_a_norm": "kv_a_layernorm",
        "kv_b_proj": "kv_b_proj",
        "o_proj": "o_proj",
    }
    for i in range(cfg.n_layers):
        src, dst = f"layers.{i}.", f"model.layers.{i}."
        out[dst + "input_layernorm.weight"] = state[src + "attn_norm.weight"]
        out[dst + "post_attention_layernorm.weight"] = state[src + "ffn_norm.weight"]
        for ours, theirs in attn_names.items():
            key = f"{src}attn.{ours}.weight"
            if key in state:
                out[f"{dst}self_attn.{theirs}.weight"] = state[key]
        if i < cfg.first_k_dense:
            out.update(_swiglu(state, src + "ffn.", dst + "mlp."))
            continue
        out[dst + "mlp.gate.weight"] = state[src + "ffn.router.weight"]
        out[dst + "mlp.gate.e_score_correction_bias"] = state[src + "ffn.router.expert_bias"]
        w1, w3, w2 = (state[f"{src}ffn.experts.{n}"] for n in ("w1", "w3", "w2"))
        out[dst + "mlp.experts.gate_up_proj"] = torch.cat((w1, w3), dim=1)
        out[dst + "mlp.experts.down_proj"] = w2.transpose(1, 2).contiguous()
        if cfg.moe.n_shared_experts > 0:
            out.update(_swiglu(state, src + "ffn.shared.", dst + "mlp.shared_experts."))
    return out


def _swiglu(state: dict[str, torch.Tensor], src: str, dst: str) -> dict[str, torch.Tensor]:
    gate, up = state[src + "w13.weight"].chunk(2, dim=0)
    return {
        dst + "gate_proj.weight": gate,
        dst + "up_proj.weight": up,
        dst + "down_proj.weight": state[src + "w2.weight"],
    }


def to_transformers(model: torch.nn.Module) -> torch.nn.Module:
    """An equivalent ``transformers.DeepseekV3ForCausalLM`` with this model's weights (fp32, eval)."""
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    cfg: ModelConfig = model.cfg  # type: ignore[assignment]
    hf_cfg = DeepseekV3Config(**deepseek_v3_config_kwargs(cfg))
    hf_cfg._attn_implementation = "eager"
    hf = DeepseekV3ForCausalLM(hf_cfg)
    state = {k: v.detach().float() for k, v in model.state_dict().items()}
    missing, unexpected = hf.load_state_dict(to_deepseek_v3_state_dict(state, cfg), strict=False)
    if unexpected or [k for k in missing if "rotary" not in k]:
        raise RuntimeError(f"conversion mismatch: missing={missing} unexpected={unexpected}")
    return hf.eval()
