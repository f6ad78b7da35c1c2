"""The small MoE model the parallel tests share (fp32, torch experts backend)."""

from __future__ import annotations

from kimi_lab.config.schema import AttentionConfig, ModelConfig, MoEBackend, MoEConfig

SMALL_MOE = ModelConfig(
    vocab_size=64,
    hidden_size=32,
    n_layers=3,
    first_k_dense=1,
    dense_ffn_dim=64,
    attention=AttentionConfig(
        n_heads=2, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8
    ),
    moe=MoEConfig(n_routed_experts=8, top_k=2, expert_ffn_dim=16, backend=MoEBackend.torch),
)
