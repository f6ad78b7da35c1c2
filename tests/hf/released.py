"""Tiny checkpoints in the exact formats Moonshot releases, built from random transformers models.

- K2 (Instruct, 0905): ``model_type: kimi_k2``, DeepSeek-V3 names, one tensor per routed
  expert, ``rope_theta`` + ``rope_scaling`` (YaRN), interleaved rotary rows, and every
  linear layer but the router and LM head in FP8 e4m3 with block scales
  (``weight_scale_inv``), ``quantization_config: {quant_method: fp8, weight_block_size}``.
- K2.5: ``model_type: kimi_k25``, the language model under ``language_model.``, the ViT as
  ``vision_tower.encoder.blocks.N.{wqkv, wo, norm0, norm1, mlp.fc0, mlp.fc1}`` (q, k rows
  interleaved per head), ``mm_projector.proj.{0,2}``, ``vt_*`` names in ``vision_config``,
  routed experts INT4 pack-quantized by the ``compressed-tensors`` library (group 32,
  symmetric, bf16 scales) with K2.5's ignore list.

Shards are split by size with a ``model.safetensors.index.json``. The quantized weights
are written with the real libraries and formats; ``dequantized`` reproduces what a
reader should get, independently of kimi_lab's import (the block formula written out
here; compressed-tensors' own decompression).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

FP8_BLOCK = [16, 16]  # small blocks, so tiny matrices span several (and partial) blocks


def k2_text_config(**over: Any) -> dict[str, Any]:
    """A K2-shaped text config at toy size, in the released dialect (rope_scaling, kimi_k2)."""
    cfg = {
        "architectures": ["DeepseekV3ForCausalLM"],
        "model_type": "kimi_k2",
        "vocab_size": 512,
        "hidden_size": 64,
        "intermediate_size": 96,
        "moe_intermediate_size": 32,
        "num_hidden_layers": 3,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "n_shared_experts": 1,
        "n_routed_experts": 8,
        "num_experts_per_tok": 2,
        "routed_scaling_factor": 2.827,
        "kv_lora_rank": 32,
        "q_lora_rank": 24,
        "qk_rope_head_dim": 8,
        "qk_nope_head_dim": 16,
        "v_head_dim": 16,
        "n_group": 1,
        "topk_group": 1,
        "topk_method": "noaux_tc",
        "scoring_func": "sigmoid",
        "norm_topk_prob": True,
        "first_k_dense_replace": 1,
        "moe_layer_freq": 1,
        "hidden_act": "silu",
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-6,
        "rope_theta": 50000.0,
        "rope_scaling": {
            "type": "yarn",
            "factor": 4.0,
            "original_max_position_embeddings": 64,
            "beta_fast": 32.0,  # K2-Instruct ships 1.0 (== beta_slow); main accepts that once i15 lands
            "beta_slow": 1.0,
            "mscale": 1.0,
            "mscale_all_dim": 1.0,
        },
        "num_nextn_predict_layers": 0,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    }
    cfg.update(over)
    return cfg


def transformers_text_config(k2: dict[str, Any]) -> Any:
    """The same model as transformers' DeepseekV3Config (its own rope_parameters dialect)."""
    from transformers import DeepseekV3Config

    skip = ("rope_scaling", "rope_theta", "model_type", "architectures", "torch_dtype")
    kw = {k: v for k, v in k2.items() if k not in skip}
    rs = dict(k2["rope_scaling"])
    kind = rs.pop("type")
    kw["rope_parameters"] = {"rope_type": kind, "rope_theta": k2["rope_theta"], **rs}
    kw["rope_interleave"] = True  # what DeepSeek and Moonshot ship
    cfg = DeepseekV3Config(**kw)
    cfg._attn_implementation = "eager"
    return cfg


def randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Non-trivial norms and selection biases, so every mapping is exercised."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            elif "bias" in name and p.dim() == 1:
                p.uniform_(-0.1, 0.1)
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.uniform_(-0.05, 0.05)
    return model.eval()


# ---------------------------------------------------------------------- names
def lm_released(state: dict[str, torch.Tensor], src: str, dst: str) -> dict[str, torch.Tensor]:
    """transformers' in-memory DeepseekV3 names -> released names (one tensor per routed expert)."""
    out = {}
    for name, t in state.items():
        if not name.startswith(src):
            continue
        rest = name[len(src) :]
        if rest.endswith("mlp.experts.gate_up_proj"):
            f = t.shape[1] // 2
            stem = dst + rest[: -len("gate_up_proj")]
            for e in range(t.shape[0]):
                out[f"{stem}{e}.gate_proj.weight"] = t[e, :f].clone()
                out[f"{stem}{e}.up_proj.weight"] = t[e, f:].clone()
        elif rest.endswith("mlp.experts.down_proj"):
            stem = dst + rest[: -len("down_proj")]
            for e in range(t.shape[0]):
                out[f"{stem}{e}.down_proj.weight"] = t[e].clone()
        else:
            out[dst + rest] = t.clone()
    return out


def _interleave(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rotate-half rows of each head back to interleaved pairs (the released ViT's q, k)."""
    rows = w.shape[0]
    half = rows // n_heads // 2
    return w.reshape(n_heads, 2, half, *w.shape[1:]).transpose(1, 2).reshape(rows, *w.shape[1:])


def vision_released(state: dict[str, torch.Tensor], n_layers: int, n_heads: int) -> dict[str, torch.Tensor]:
    """transformers' in-memory kimi_k25 vision names -> the released K2.5 names."""
    out = {
        "vision_tower.patch_embed.proj.weight": state["model.vision_tower.patch_embed.proj.weight"],
        "vision_tower.patch_embed.proj.bias": state["model.vision_tower.patch_embed.proj.bias"],
        "vision_tower.patch_embed.pos_emb.weight": state[
            "model.vision_tower.patch_embed.pos_emb.position_embeddings"
        ],
    }
    for suffix in ("weight", "bias"):
        out[f"vision_tower.encoder.final_layernorm.{suffix}"] = state[
            f"model.vision_tower.final_layernorm.{suffix}"
        ]
        for theirs, released in (("pre_norm", "pre_norm"), ("in_proj", "proj.0"), ("out_proj", "proj.2")):
            out[f"mm_projector.{released}.{suffix}"] = state[f"model.mm_projector.{theirs}.{suffix}"]
        for i in range(n_layers):
            s, d = f"model.vision_tower.layers.{i}.", f"vision_tower.encoder.blocks.{i}."
            for theirs, released in (
                ("norm1", "norm0"),
                ("norm2", "norm1"),
                ("attn.proj", "wo"),
                ("mlp.fc1", "mlp.fc0"),
                ("mlp.fc2", "mlp.fc1"),
            ):
                out[f"{d}{released}.{suffix}"] = state[f"{s}{theirs}.{suffix}"]
            q = _interleave(state[f"{s}attn.q_proj.{suffix}"], n_heads)
            k = _interleave(state[f"{s}attn.k_proj.{suffix}"], n_heads)
            out[f"{d}wqkv.{suffix}"] = torch.cat((q, k, state[f"{s}attn.v_proj.{suffix}"]))
    return {k: v.clone() for k, v in out.items()}


# ---------------------------------------------------------------- quantization
def fp8_quantize(w: torch.Tensor, block: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    bo, bi = block
    rows, cols = w.shape
    scale = torch.zeros(math.ceil(rows / bo), math.ceil(cols / bi))
    q = torch.zeros(rows, cols, dtype=torch.float8_e4m3fn)
    for i in range(scale.shape[0]):
        for j in range(scale.shape[1]):
            blk = w[i * bo : (i + 1) * bo, j * bi : (j + 1) * bi].float()
            scale[i, j] = blk.abs().max().clamp_min(1e-12) / 448.0
            q[i * bo : (i + 1) * bo, j * bi : (j + 1) * bi] = (blk / scale[i, j]).to(torch.float8_e4m3fn)
    return q, scale


def fp8_dequantize(q: torch.Tensor, scale: torch.Tensor, block: list[int]) -> torch.Tensor:
    """DeepSeek-V3's block formula: every (bo x bi) block times its weight_scale_inv entry."""
    bo, bi = block
    out = q.float().clone()
    for i in range(scale.shape[0]):
        for j in range(scale.shape[1]):
            out[i * bo : (i + 1) * bo, j * bi : (j + 1) * bi] *= scale[i, j]
    return out


def fp8_target(name: str) -> bool:
    """What K2 stores in FP8: every linear weight of attention and the FFNs (not router, head, norms)."""
    return name.endswith("_proj.weight") or name.endswith("_proj_with_mqa.weight")


INT4_SCHEME = {
    "num_bits": 4,
    "type": "int",
    "symmetric": True,
    "strategy": "group",
    "group_size": 32,
    "dynamic": False,
    "observer": "minmax",
    "observer_kwargs": {},
    "actorder": None,
    "block_structure": None,
}


def int4_config() -> dict[str, Any]:
    """K2.5's quantization_config: routed experts only (attention, shared experts, dense MLPs ignored)."""
    return {
        "config_groups": {
            "group_0": {
                "input_activations": None,
                "output_activations": None,
                "targets": ["Linear"],
                "weights": INT4_SCHEME,
            }
        },
        "format": "pack-quantized",
        "ignore": [
            "lm_head",
            "re:.*self_attn.*",
            "re:.*shared_experts.*",
            r"re:.*mlp\.(gate|up|gate_up|down)_proj.*",
        ],
        "kv_cache_scheme": None,
        "quant_method": "compressed-tensors",
        "quantization_status": "compressed",
    }


def _scheme() -> Any:
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    args = {k: v for k, v in INT4_SCHEME.items() if v is not None and k != "observer_kwargs"}
    return QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(**args))


def int4_compress(w: torch.Tensor) -> dict[str, torch.Tensor]:
    """One expert matrix through compressed-tensors: minmax scales (bf16), packed int32, shape."""
    from compressed_tensors.compressors import PackedQuantizationCompressor
    from compressed_tensors.quantization.utils import calculate_qparams

    scheme = _scheme()
    groups = w.float().view(w.shape[0], -1, 32)
    scale, _ = calculate_qparams(groups.amin(-1), groups.amax(-1), scheme.weights)
    scale = scale.to(torch.bfloat16)
    out = PackedQuantizationCompressor.compress({"weight": w.float(), "weight_scale": scale.float()}, scheme)
    return {
        "weight_packed": out["weight_packed"],
        "weight_scale": scale,
        "weight_shape": torch.tensor(list(w.shape), dtype=torch.int32),
    }


def int4_decompress(packed: dict[str, torch.Tensor]) -> torch.Tensor:
    from compressed_tensors.compressors import PackedQuantizationCompressor

    parts = {**packed, "weight_scale": packed["weight_scale"].float()}
    return PackedQuantizationCompressor.decompress(parts, _scheme())["weight"].float()


def routed_expert(name: str) -> bool:
    return ".mlp.experts." in name and name.endswith("_proj.weight")


# ---------------------------------------------------------------------- files
def write_shards(tensors: dict[str, torch.Tensor], out: Path, shard_bytes: int) -> None:
    """Safetensors shards of at most ``shard_bytes`` (a tensor never split) and the index json."""
    from safetensors.torch import save_file

    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        n = t.numel() * t.element_size()
        if shards[-1] and size + n > shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += n
    weight_map = {}
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out / file), metadata={"format": "pt"})
        weight_map.update({k: file for k in shard})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )


def quantize_fp8(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(released tensors with FP8 linears + scales, the float weights a reader must recover)."""
    out, expect = {}, {}
    for name, t in tensors.items():
        if fp8_target(name):
            q, s = fp8_quantize(t, FP8_BLOCK)
            out[name], out[name[: -len("weight")] + "weight_scale_inv"] = q, s
            expect[name] = fp8_dequantize(q, s, FP8_BLOCK)
        else:
            out[name] = t.to(torch.bfloat16) if t.is_floating_point() and "e_score" not in name else t
            expect[name] = out[name].float()
    return out, expect


def quantize_int4(
    tensors: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(released tensors with INT4 routed experts, the float weights a reader must recover)."""
    out, expect = {}, {}
    for name, t in tensors.items():
        if routed_expert(name):
            packed = int4_compress(t)
            stem = name[: -len("weight")]
            out.update({stem + k: v for k, v in packed.items()})
            expect[name] = int4_decompress(packed)
        else:
            out[name] = t.to(torch.bfloat16) if t.is_floating_point() and "e_score" not in name else t
            expect[name] = out[name].float()
    return out, expect


def write_k2(
    out: Path, model: torch.nn.Module, k2: dict[str, Any], shard_bytes: int
) -> dict[str, torch.Tensor]:
    """The released K2 layout (FP8) of ``model``; returns the dequantized released tensors."""
    out.mkdir(parents=True, exist_ok=True)
    released = lm_released(model.state_dict(), "model.", "model.")
    released["lm_head.weight"] = model.state_dict()["lm_head.weight"].clone()
    tensors, expect = quantize_fp8(released)
    write_shards(tensors, out, shard_bytes)
    config = {
        **k2,
        "quantization_config": {
            "activation_scheme": "dynamic",
            "fmt": "e4m3",
            "quant_method": "fp8",
            "weight_block_size": FP8_BLOCK,
        },
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return expect


def k25_config(text: dict[str, Any], vision: Any, image_token_id: int) -> dict[str, Any]:
    """The released K2.5 config.json: vt_* vision names (plus transformers' own, which it reads)."""
    return {
        "architectures": ["KimiK25ForConditionalGeneration"],
        "model_type": "kimi_k25",
        "media_placeholder_token_id": image_token_id,
        "quantization_config": int4_config(),
        "text_config": {**text, "model_type": "kimi_k2"},
        "tie_word_embeddings": False,
        "vision_config": {
            "init_pos_emb_height": vision.pos_emb_height,
            "init_pos_emb_width": vision.pos_emb_width,
            "init_pos_emb_time": vision.pos_emb_time,
            "merge_kernel_size": list(vision.merge_kernel_size),
            "merge_type": "sd2_tpool",
            "mm_hidden_size": vision.hidden_size,
            "mm_projector_type": "patchmerger",
            "patch_size": vision.patch_size,
            "pos_emb_type": "divided_fixed",
            "projector_hidden_act": "gelu",
            "projector_ln_eps": 1e-5,
            "text_hidden_size": text["hidden_size"],
            "video_attn_type": "spatial_temporal",
            "vt_hidden_size": vision.hidden_size,
            "vt_intermediate_size": vision.intermediate_size,
            "vt_num_attention_heads": vision.num_attention_heads,
            "vt_num_hidden_layers": vision.num_hidden_layers,
        },
    }


def write_k25(
    out: Path, model: torch.nn.Module, config: dict[str, Any], shard_bytes: int
) -> dict[str, torch.Tensor]:
    """The released K2.5 layout (INT4 routed experts) of a transformers kimi_k25 ``model``."""
    out.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    vc = model.config.vision_config
    released = lm_released(state, "model.language_model.", "language_model.model.")
    released["language_model.lm_head.weight"] = state["lm_head.weight"].clone()
    released.update(vision_released(state, vc.num_hidden_layers, vc.num_attention_heads))
    tensors, expect = quantize_int4(released)
    write_shards(tensors, out, shard_bytes)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return expect


def load_released_into(model: torch.nn.Module, expect: dict[str, torch.Tensor], kind: str) -> None:
    """Put the dequantized released weights back into the transformers model (the oracle)."""
    state = model.state_dict()
    vc = getattr(model.config, "vision_config", None)
    reference = (
        lm_released(state, "model.", "model.")
        if kind == "k2"
        else {
            **lm_released(state, "model.language_model.", "language_model.model."),
            **vision_released(state, vc.num_hidden_layers, vc.num_attention_heads),
        }
    )
    for name in reference:  # every released tensor went through quantization as intended
        assert name in expect, name
    new = {}
    for name, t in state.items():
        if name.endswith("mlp.experts.gate_up_proj") or name.endswith("mlp.experts.down_proj"):
            src = "model." if kind == "k2" else "model.language_model."
            dst = "model." if kind == "k2" else "language_model.model."
            stem = dst + name[len(src) : -len("gate_up_proj" if "gate_up" in name else "down_proj")]
            n = t.shape[0]
            if "gate_up" in name:
                new[name] = torch.stack(
                    [
                        torch.cat(
                            (expect[f"{stem}{e}.gate_proj.weight"], expect[f"{stem}{e}.up_proj.weight"])
                        )
                        for e in range(n)
                    ]
                )
            else:
                new[name] = torch.stack([expect[f"{stem}{e}.down_proj.weight"] for e in range(n)])
    if kind == "k2":
        for name in state:
            if name not in new and name in expect:
                new[name] = expect[name]
    else:
        for name in state:
            if name.startswith("model.language_model."):
                key = "language_model.model." + name[len("model.language_model.") :]
                if name not in new and key in expect:
                    new[name] = expect[key]
        new["lm_head.weight"] = expect["language_model.lm_head.weight"]
        # the vision tower is not quantized in K2.5: its bf16 values
        for name in state:
            if name.startswith(("model.vision_tower.", "model.mm_projector.")):
                new[name] = state[name].to(torch.bfloat16).float()
    missing, unexpected = model.load_state_dict(new, strict=False)
    assert not unexpected, unexpected
    assert not [m for m in missing if "rotary" not in m], missing
