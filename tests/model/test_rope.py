"""The k2 preset against the released checkpoint's config.json, and YaRN as the K2 releases set it."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from kimi_lab.config import compose, to_run_config, validate_model
from kimi_lab.config.schema import RopeScaling

# moonshotai/Kimi-K2.5 config.json, text_config (the language model's fields; quoted, not derived).
RELEASED_K25_TEXT_CONFIG = {
    "vocab_size": 163840,
    "hidden_size": 7168,
    "intermediate_size": 18432,
    "moe_intermediate_size": 2048,
    "num_hidden_layers": 61,
    "num_attention_heads": 64,
    "num_key_value_heads": 64,
    "n_shared_experts": 1,
    "n_routed_experts": 384,
    "routed_scaling_factor": 2.827,
    "kv_lora_rank": 512,
    "q_lora_rank": 1536,
    "qk_rope_head_dim": 64,
    "v_head_dim": 128,
    "qk_nope_head_dim": 128,
    "n_group": 1,
    "topk_group": 1,
    "num_experts_per_tok": 8,
    "first_k_dense_replace": 1,
    "norm_topk_prob": True,
    "max_position_embeddings": 262144,
    "rms_norm_eps": 1e-5,
    "rope_theta": 50000.0,
    "rope_scaling": {
        "type": "yarn",
        "factor": 64.0,
        "original_max_position_embeddings": 4096,
        "beta_fast": 32.0,
        "beta_slow": 1.0,
        "mscale": 1.0,
        "mscale_all_dim": 1.0,
    },
}


def test_k2_preset_is_what_importing_the_released_config_gives() -> None:
    """Every field config.json states (YaRN included) reaches the preset unchanged through import-hf's
    own conversion; only the training-side keys (init, balancing, backend) are the preset's."""
    transformers = pytest.importorskip("transformers")
    from kimi_lab.hf.config import model_config_from_hf

    imported, _ = model_config_from_hf(transformers.DeepseekV3Config(**RELEASED_K25_TEXT_CONFIG))
    preset = to_run_config(compose(["model=k2"])).model
    assert imported.attention == preset.attention
    for key in ("vocab_size", "hidden_size", "n_layers", "first_k_dense", "dense_ffn_dim", "max_seq_len"):
        assert getattr(imported, key) == getattr(preset, key), key
    assert imported.norm_eps == preset.norm_eps
    for key in ("n_routed_experts", "n_shared_experts", "top_k", "expert_ffn_dim", "routed_scaling_factor"):
        assert getattr(imported.moe, key) == getattr(preset.moe, key), key


def _tiny_yarn(beta_fast: float, beta_slow: float):
    cfg = to_run_config(compose(["model=tiny"])).model
    rope = replace(
        cfg.attention.rope,
        scaling=RopeScaling.yarn,
        theta=50000.0,
        factor=8.0,
        original_max_seq_len=16,
        beta_fast=beta_fast,
        beta_slow=beta_slow,
        mscale=1.0,
        mscale_all_dim=1.0,
    )
    return replace(cfg, attention=replace(cfg.attention, rope=rope))


def test_yarn_as_k2_instruct_sets_it_validates_and_matches_transformers() -> None:
    """Kimi-K2-Instruct and -0905 ship beta_fast == beta_slow == 1: a valid config whose logits
    equal transformers' DeepSeek-V3 with the same rope parameters."""
    pytest.importorskip("transformers")
    from kimi_lab.hf.in_memory import to_transformers
    from kimi_lab.model.multimodal import KimiK25

    cfg = _tiny_yarn(beta_fast=1.0, beta_slow=1.0)
    validate_model(cfg)
    torch.manual_seed(0)
    model = KimiK25(cfg).eval()
    hf = to_transformers(model)
    ids = torch.randint(0, cfg.vocab_size, (2, 40))  # beyond original_max_seq_len
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, hf(input_ids=ids).logits, rtol=1e-4, atol=1e-4)


def test_yarn_betas_out_of_order_fail_validation() -> None:
    from kimi_lab.errors import ConfigError

    with pytest.raises(ConfigError, match="beta_fast"):
        validate_model(_tiny_yarn(beta_fast=1.0, beta_slow=2.0))
