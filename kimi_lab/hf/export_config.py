"""The config.json of an export: transformers' keys, with the release's spellings alongside.

transformers reads ``rope_parameters`` and its own ``kimi_k25`` vision names; serving
engines that load the released K2 / K2.5 read ``rope_theta`` + ``rope_scaling``, the
``vt_*`` vision names and ``media_placeholder_token_id``. An export carries both, and
with ``--quantize int4`` K2.5's ``quantization_config``.
"""

from __future__ import annotations

from typing import Any

from kimi_lab.config.schema import ModelConfig
from kimi_lab.hf import quant
from kimi_lab.hf.config import VISION_FIXED


def _text_config(cfg: ModelConfig, dtype: str) -> dict[str, Any]:
    from kimi_lab.model.hf import deepseek_v3_config_kwargs

    text = deepseek_v3_config_kwargs(cfg)
    text["rope_interleave"] = True  # the rows were written interleaved, as DeepSeek / Moonshot ship them
    rope = dict(text["rope_parameters"])
    text.update(
        architectures=["DeepseekV3ForCausalLM"],
        model_type="deepseek_v3",
        dtype=dtype,
        hidden_act="silu",
        scoring_func="sigmoid",
        topk_method="noaux_tc",
        moe_layer_freq=1,
        num_nextn_predict_layers=0,
        # the pre-transformers-5 spelling, which serving engines still read
        rope_theta=rope["rope_theta"],
        rope_scaling=None if rope["rope_type"] == "default" else {**rope, "type": rope["rope_type"]},
    )
    return text


def _vision_config(cfg: ModelConfig, text: dict[str, Any]) -> dict[str, Any]:
    from kimi_lab.model.hf import kimi_k25_config_kwargs

    v = cfg.vision
    assert v is not None
    out = kimi_k25_config_kwargs(cfg)
    out["text_config"] = text
    out["architectures"] = ["Kimi_K25ForConditionalGeneration"]
    out["model_type"] = "kimi_k25"
    out["media_placeholder_token_id"] = v.image_token_id
    out["vision_config"].update(  # the released K2.5 names of the same fields
        vt_hidden_size=v.hidden_size,
        vt_num_hidden_layers=v.n_layers,
        vt_num_attention_heads=v.n_heads,
        vt_intermediate_size=v.ffn_dim,
        init_pos_emb_height=v.pos_emb_size,
        init_pos_emb_width=v.pos_emb_size,
        init_pos_emb_time=v.pos_emb_time,
        mm_hidden_size=v.hidden_size,
        text_hidden_size=cfg.hidden_size,
        projector_ln_eps=v.norm_eps,
        **{k: val for k, val in VISION_FIXED.items()},
    )
    return out


def int4_quantization_config() -> dict[str, Any]:
    """K2.5's quantization_config: INT4 routed experts, everything else as is."""
    return {
        "config_groups": {
            "group_0": {
                "input_activations": None,
                "output_activations": None,
                "targets": ["Linear"],
                "weights": {
                    "actorder": None,
                    "block_structure": None,
                    "dynamic": False,
                    "group_size": quant.INT4_GROUP,
                    "num_bits": 4,
                    "observer": "minmax",
                    "observer_kwargs": {},
                    "strategy": "group",
                    "symmetric": True,
                    "type": "int",
                },
            }
        },
        "format": "pack-quantized",
        "ignore": [
            "lm_head",
            "re:.*self_attn.*",
            "re:.*shared_experts.*",
            r"re:.*mlp\.(gate|up|gate_up|down)_proj.*",
            "re:.*vision_tower.*",
            "re:.*mm_projector.*",
        ],
        "kv_cache_scheme": None,
        "quant_method": "compressed-tensors",
        "quantization_status": "compressed",
    }


def hf_config(cfg: ModelConfig, dtype: str, quantize: str | None) -> dict[str, Any]:
    """The config.json of an export (transformers loads it; the release's keys ride along)."""
    text = _text_config(cfg, dtype)
    out = text if cfg.vision is None else _vision_config(cfg, text)
    out["dtype"] = dtype
    if quantize == "int4":
        out["quantization_config"] = int4_quantization_config()
    return out
