"""Checkpoints in the released formats without a model behind them: big random FP8 K2 folders
(for memory), the real K2.5's config and index names (for sizing), a small tiktoken tokenizer."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from tests.hf.released import k25_config


# ------------------------------------------------------------- big, synthetic
def k2_tensor_shapes(c: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], bool]]:
    """Every tensor of a released K2 checkpoint of config ``c``: name -> (shape, stored in FP8)."""
    d, h, v = c["hidden_size"], c["num_attention_heads"], c["vocab_size"]
    nope, rope, vd = c["qk_nope_head_dim"], c["qk_rope_head_dim"], c["v_head_dim"]
    qr, kvr, f, e = c["q_lora_rank"], c["kv_lora_rank"], c["moe_intermediate_size"], c["n_routed_experts"]
    out: dict[str, tuple[tuple[int, ...], bool]] = {
        "model.embed_tokens.weight": ((v, d), False),
        "model.norm.weight": ((d,), False),
        "lm_head.weight": ((v, d), False),
    }
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out |= {
            p + "input_layernorm.weight": ((d,), False),
            p + "post_attention_layernorm.weight": ((d,), False),
            p + "self_attn.q_a_proj.weight": ((qr, d), True),
            p + "self_attn.q_a_layernorm.weight": ((qr,), False),
            p + "self_attn.q_b_proj.weight": ((h * (nope + rope), qr), True),
            p + "self_attn.kv_a_proj_with_mqa.weight": ((kvr + rope, d), True),
            p + "self_attn.kv_a_layernorm.weight": ((kvr,), False),
            p + "self_attn.kv_b_proj.weight": ((h * (nope + vd), kvr), True),
            p + "self_attn.o_proj.weight": ((d, h * vd), True),
        }
        mlps = [(p + "mlp.", c["intermediate_size"])]
        if i >= c["first_k_dense_replace"]:
            out |= {
                p + "mlp.gate.weight": ((e, d), False),
                p + "mlp.gate.e_score_correction_bias": ((e,), False),
            }
            mlps = [(f"{p}mlp.experts.{j}.", f) for j in range(e)]
            mlps.append((p + "mlp.shared_experts.", f * c["n_shared_experts"]))
        for stem, width in mlps:
            out |= {
                stem + "gate_proj.weight": ((width, d), True),
                stem + "up_proj.weight": ((width, d), True),
                stem + "down_proj.weight": ((d, width), True),
            }
    return out


def random_fp8(shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    """Random finite float8 e4m3 values, drawn as bytes (fast at any size; 0x7f and 0xff are NaN)."""
    magnitude = torch.randint(0, 0x7F, shape, generator=g, dtype=torch.uint8)
    sign = torch.randint(0, 2, shape, generator=g, dtype=torch.uint8) << 7
    return (magnitude | sign).view(torch.float8_e4m3fn)


def write_synthetic_k2(out: Path, c: dict[str, Any], shard_bytes: int, block: int = 128) -> int:
    """A released-format FP8 K2 folder of random weights, written shard by shard (never held whole).

    Returns the bytes on disk."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    weight_map: dict[str, str] = {}
    shard: dict[str, torch.Tensor] = {}
    sizes = {"shard": 0, "total": 0, "files": 0}

    def flush() -> None:
        sizes["files"] += 1
        file = f"model-{sizes['files']:05d}.safetensors"
        save_file(shard, str(out / file))
        weight_map.update({k: file for k in shard})
        shard.clear()
        sizes["shard"] = 0

    for name, (shape, fp8) in k2_tensor_shapes(c).items():
        if fp8:
            scale = torch.rand(math.ceil(shape[0] / block), math.ceil(shape[1] / block), generator=g) / 1e4
            parts = {name: random_fp8(shape, g), name[: -len("weight")] + "weight_scale_inv": scale}
        else:
            dtype = torch.float32 if "e_score" in name else torch.bfloat16
            parts = {name: (torch.randn(shape, generator=g) * 0.02).to(dtype)}
        for k, t in parts.items():
            n = t.numel() * t.element_size()
            if shard and sizes["shard"] + n > shard_bytes:
                flush()
            shard[k] = t
            sizes["shard"] += n
            sizes["total"] += n
    flush()
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": sizes["total"]}, "weight_map": weight_map})
    )
    fp8 = {
        "activation_scheme": "dynamic",
        "fmt": "e4m3",
        "quant_method": "fp8",
        "weight_block_size": [block, block],
    }
    (out / "config.json").write_text(json.dumps({**c, "quantization_config": fp8}))
    return sizes["total"]


# ------------------------------------------------------------------ tokenizer
# K2's named special ids, as offsets past the BPE ranks (tokenizer_config.json's added_tokens_decoder)
K2_SPECIALS = {
    0: "[BOS]",
    1: "[EOS]",
    2: "<|im_end|>",
    3: "<|im_user|>",
    4: "<|im_assistant|>",
    6: "<|start_header_id|>",
    7: "<|end_header_id|>",
    9: "[EOT]",
    10: "<|im_system|>",
    11: "<|tool_calls_section_begin|>",
    12: "<|tool_calls_section_end|>",
    13: "<|tool_call_begin|>",
    14: "<|tool_call_argument_begin|>",
    15: "<|tool_call_end|>",
    17: "<|im_middle|>",
    18: "<|media_begin|>",
    19: "<|media_content|>",
    20: "<|media_end|>",
    21: "<|media_pad|>",
    254: "[UNK]",
    255: "[PAD]",
}
MERGES = [
    b"th",
    b"he",
    b"in",
    b"er",
    b"an",
    b"re",
    b"on",
    b" t",
    b"en",
    b"at",
    b"ou",
    b"ed",
    b"nd",
    b"to",
    b"or",
    b"es",
]
MERGES += [
    b"is",
    b"it",
    b"ar",
    b"te",
    b"se",
    b"ng",
    b"al",
    b"st",
    b" a",
    b" s",
    b" i",
    b" o",
    b" w",
    b" c",
    b"e ",
    b"s ",
]


def write_tiktoken(folder: Path) -> int:
    """A small tiktoken BPE (bytes + 32 merges) and K2's tokenizer_config.json; returns the vocab size."""
    import base64

    folder.mkdir(parents=True, exist_ok=True)
    tokens = [bytes([b]) for b in range(256)] + MERGES
    lines = [f"{base64.b64encode(t).decode()} {rank}" for rank, t in enumerate(tokens)]
    (folder / "tiktoken.model").write_text("\n".join(lines) + "\n")
    n = len(tokens)
    decoder = {str(n + i): {"content": name, "special": True} for i, name in K2_SPECIALS.items()}
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"added_tokens_decoder": decoder, "tokenizer_class": "TikTokenTokenizer"}, indent=2)
    )
    return n + 256


# ------------------------------------------------------ the real K2.5, config only
def k25_release_config() -> dict[str, Any]:
    """moonshotai/Kimi-K2.5's config.json (the fields a conversion reads)."""
    text = {
        "architectures": ["DeepseekV3ForCausalLM"],
        "model_type": "deepseek_v3",
        "vocab_size": 163840,
        "hidden_size": 7168,
        "intermediate_size": 18432,
        "moe_intermediate_size": 2048,
        "num_hidden_layers": 61,
        "num_attention_heads": 64,
        "num_key_value_heads": 64,
        "n_shared_experts": 1,
        "n_routed_experts": 384,
        "num_experts_per_tok": 8,
        "routed_scaling_factor": 2.827,
        "kv_lora_rank": 512,
        "q_lora_rank": 1536,
        "qk_rope_head_dim": 64,
        "qk_nope_head_dim": 128,
        "v_head_dim": 128,
        "n_group": 1,
        "topk_group": 1,
        "topk_method": "noaux_tc",
        "scoring_func": "sigmoid",
        "norm_topk_prob": True,
        "first_k_dense_replace": 1,
        "moe_layer_freq": 1,
        "hidden_act": "silu",
        "max_position_embeddings": 262144,
        "rms_norm_eps": 1e-5,
        "rope_theta": 50000.0,
        "rope_parameters": {
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "factor": 64.0,
            "mscale": 1.0,
            "mscale_all_dim": 1.0,
            "original_max_position_embeddings": 4096,
            "rope_theta": 50000.0,
            "rope_type": "yarn",
            "type": "yarn",
        },
        "num_nextn_predict_layers": 0,
        "tie_word_embeddings": False,
    }
    vision = SimpleNamespace(
        pos_emb_height=64,
        pos_emb_width=64,
        pos_emb_time=4,
        merge_kernel_size=(2, 2),
        hidden_size=1152,
        patch_size=14,
        intermediate_size=4304,
        num_attention_heads=16,
        num_hidden_layers=27,
    )
    config = k25_config(text, vision, 163605)
    config["text_config"]["model_type"] = "deepseek_v3"
    return config


def k25_release_index() -> dict[str, str]:
    """The names in Kimi-K2.5's model.safetensors.index.json (208,550 of them), spread over 64 files."""
    names = [
        "language_model.lm_head.weight",
        "language_model.model.embed_tokens.weight",
        "language_model.model.norm.weight",
    ]
    attn = [
        "q_a_proj",
        "q_a_layernorm",
        "q_b_proj",
        "kv_a_proj_with_mqa",
        "kv_a_layernorm",
        "kv_b_proj",
        "o_proj",
    ]
    for i in range(61):
        p = f"language_model.model.layers.{i}."
        names += [p + "input_layernorm.weight", p + "post_attention_layernorm.weight"]
        names += [f"{p}self_attn.{a}.weight" for a in attn]
        if i == 0:
            names += [f"{p}mlp.{m}.weight" for m in ("gate_proj", "up_proj", "down_proj")]
            continue
        names += [p + "mlp.gate.weight", p + "mlp.gate.e_score_correction_bias"]
        names += [f"{p}mlp.shared_experts.{m}.weight" for m in ("gate_proj", "up_proj", "down_proj")]
        for e in range(384):
            for m in ("gate_proj", "up_proj", "down_proj"):
                names += [
                    f"{p}mlp.experts.{e}.{m}.{part}"
                    for part in ("weight_packed", "weight_scale", "weight_shape")
                ]
    for suffix in ("weight", "bias"):
        names += [f"mm_projector.{m}.{suffix}" for m in ("pre_norm", "proj.0", "proj.2")]
        names += [f"vision_tower.encoder.final_layernorm.{suffix}", f"vision_tower.patch_embed.proj.{suffix}"]
        for i in range(27):
            for m in ("mlp.fc0", "mlp.fc1", "norm0", "norm1", "wo", "wqkv"):
                names.append(f"vision_tower.encoder.blocks.{i}.{m}.{suffix}")
    names.append("vision_tower.patch_embed.pos_emb.weight")
    return {n: f"model-{i * 64 // len(names) + 1:05d}-of-000064.safetensors" for i, n in enumerate(names)}
