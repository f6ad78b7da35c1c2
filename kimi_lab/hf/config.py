"""config.json of a Hugging Face folder -> kimi_lab's ModelConfig, without transformers.

Three dialects say the same thing: transformers' own ``deepseek_v3`` / ``kimi_k25``
configs, Moonshot's released ``kimi_k2`` (K2, K2-Instruct-0905: ``rope_scaling`` +
``rope_theta``) and the released ``kimi_k25`` (a ``vision_config`` with ``vt_*`` names,
``media_placeholder_token_id``). Each is normalised to transformers' names, then
``model.hf.model_config_from_hf`` (the one place that maps them to ours) does the rest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from kimi_lab.config.schema import ModelConfig
from kimi_lab.errors import ConfigError

TEXT_TYPES = ("deepseek_v3", "kimi_k2")
VISION_TYPES = ("kimi_k25",)

# released K2.5 vision_config name -> transformers' Kimi_K25VisionConfig name
VISION_ALIASES = {
    "vt_hidden_size": "hidden_size",
    "vt_num_hidden_layers": "num_hidden_layers",
    "vt_num_attention_heads": "num_attention_heads",
    "vt_intermediate_size": "intermediate_size",
    "init_pos_emb_height": "pos_emb_height",
    "init_pos_emb_width": "pos_emb_width",
    "init_pos_emb_time": "pos_emb_time",
}
# released K2.5 choices kimi_lab's MoonViT-3D implements; anything else would change the model
VISION_FIXED = {
    "pos_emb_type": "divided_fixed",
    "video_attn_type": "spatial_temporal",
    "merge_type": "sd2_tpool",
    "mm_projector_type": "patchmerger",
    "projector_hidden_act": "gelu",
}


@dataclass(frozen=True)
class HFConfig:
    """What a conversion needs to know about a folder's config.json."""

    model: ModelConfig
    model_type: str  # normalised: deepseek_v3 or kimi_k25
    rope_interleave: bool  # DeepSeek's (and Moonshot's) pairwise RoPE layout
    quantization: dict[str, Any] | None  # the raw quantization_config, if any
    extra_layers: int  # multi-token-prediction layers past n_layers, not imported
    raw: dict[str, Any]


def _rope_parameters(c: dict[str, Any]) -> dict[str, Any]:
    """transformers 5 keeps ``rope_parameters``; released configs have ``rope_theta`` + ``rope_scaling``."""
    if c.get("rope_parameters"):
        rp = dict(c["rope_parameters"])
    else:
        rp = dict(c.get("rope_scaling") or {})
        rp.setdefault("rope_theta", c.get("rope_theta", 10000.0))
    kind = rp.get("rope_type") or rp.get("type") or "default"
    rp["rope_type"] = kind
    rp.setdefault("rope_theta", c.get("rope_theta", 10000.0))
    return rp


def _check_text(c: dict[str, Any], where: str) -> None:
    checks = {
        "scoring_func": ("sigmoid", "K2 routes with sigmoid scores"),
        "topk_method": ("noaux_tc", "K2 selects with the aux-loss-free bias"),
        "hidden_act": ("silu", "K2's experts are SwiGLU"),
        "moe_layer_freq": (1, "every layer past first_k_dense_replace is MoE in K2"),
    }
    for key, (want, why) in checks.items():
        if key in c and c[key] is not None and c[key] != want:
            raise ConfigError(f"{where}: {key}={c[key]!r} is not supported ({why}: {want!r})")


def _text_namespace(c: dict[str, Any], where: str) -> SimpleNamespace:
    _check_text(c, where)
    missing = [
        k
        for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "kv_lora_rank")
        if k not in c
    ]
    if missing:
        raise ConfigError(f"{where}: config lacks {', '.join(missing)} (not a DeepSeek-V3 / K2 config)")
    out = {
        "first_k_dense_replace": 0,
        "intermediate_size": 0,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        "q_lora_rank": None,
        "n_shared_experts": 0,
        "routed_scaling_factor": 1.0,
        "rope_interleave": True,  # transformers' default for deepseek_v3, and what DeepSeek / Moonshot ship
        **c,
    }
    out["rope_parameters"] = _rope_parameters(c)
    return SimpleNamespace(**out)


def _vision_namespace(top: dict[str, Any], v: dict[str, Any], where: str) -> SimpleNamespace:
    for key, want in VISION_FIXED.items():
        if key in v and v[key] != want:
            raise ConfigError(f"{where}: vision_config.{key}={v[key]!r} is not supported ({want!r})")
    vc = {theirs: v[ours] for ours, theirs in VISION_ALIASES.items() if ours in v}
    vc.update({k: val for k, val in v.items() if k not in VISION_ALIASES})
    vc.setdefault("hidden_act", "gelu_pytorch_tanh")
    vc.setdefault("merge_kernel_size", [2, 2])
    vc.setdefault("patch_size", 14)
    if "mm_hidden_size" in v and v["mm_hidden_size"] != vc.get("hidden_size"):
        raise ConfigError(f"{where}: vision_config.mm_hidden_size differs from the tower's width")
    missing = [
        k
        for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
        if k not in vc
    ]
    if missing:
        raise ConfigError(f"{where}: vision_config lacks {', '.join(missing)}")
    vc.setdefault("pos_emb_height", 64)
    vc.setdefault("pos_emb_width", vc["pos_emb_height"])
    vc.setdefault("pos_emb_time", 4)
    vc["rope_parameters"] = vc.get("rope_parameters") or {"rope_theta": 10000.0}
    return SimpleNamespace(**vc)


def parse_config(raw: dict[str, Any], where: str = "config.json", name: str = "imported") -> HFConfig:
    """A config.json dict (any of the three dialects) as an HFConfig."""
    from kimi_lab.model.hf import model_config_from_hf

    model_type = raw.get("model_type")
    if model_type in VISION_TYPES or "vision_config" in raw:
        text = raw.get("text_config")
        if not isinstance(text, dict):
            raise ConfigError(f"{where}: a kimi_k25 config needs a text_config")
        if text.get("model_type", "deepseek_v3") not in TEXT_TYPES:
            raise ConfigError(f"{where}: text_config.model_type={text.get('model_type')!r} is not supported")
        text_ns = _text_namespace(text, where)
        vision_ns = _vision_namespace(raw, raw.get("vision_config") or {}, where)
        image = raw.get("image_token_id", raw.get("media_placeholder_token_id"))
        if image is None:
            raise ConfigError(f"{where}: no image_token_id / media_placeholder_token_id")
        vocab = int(text["vocab_size"])
        ns = SimpleNamespace(
            text_config=text_ns,
            vision_config=vision_ns,
            tie_word_embeddings=raw.get("tie_word_embeddings", False),
            projection_layer_norm_eps=raw.get(
                "projection_layer_norm_eps", (raw.get("vision_config") or {}).get("projector_ln_eps", 1e-5)
            ),
            image_token_id=int(image),
            # transformers' kimi_k25 default: one past the vocabulary (K2.5 feeds video chunks as images)
            video_token_id=int(raw.get("video_token_id", vocab)),
        )
        normalised = "kimi_k25"
        quant = raw.get("quantization_config") or text.get("quantization_config")
        text_raw = text
    elif model_type in TEXT_TYPES or raw.get("architectures") == ["DeepseekV3ForCausalLM"]:
        ns = _text_namespace(raw, where)
        normalised = "deepseek_v3"
        quant = raw.get("quantization_config")
        text_raw = raw
    else:
        raise ConfigError(
            f"{where}: model_type={model_type!r} is not supported (deepseek_v3, kimi_k2, kimi_k25)"
        )
    model, interleave = model_config_from_hf(ns, name)
    return HFConfig(
        model=model,
        model_type=normalised,
        rope_interleave=interleave,
        quantization=quant,
        extra_layers=int(text_raw.get("num_nextn_predict_layers") or 0),
        raw=raw,
    )


def read_hf_config(hf_dir: str | Path, name: str | None = None) -> HFConfig:
    """The config.json of an HF folder; a missing or unreadable file is a one-line error."""
    hf_dir = Path(hf_dir)
    path = hf_dir / "config.json"
    if not path.is_file():
        raise ConfigError(f"{hf_dir}: no config.json (not a Hugging Face checkpoint folder)")
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exn:
        raise ConfigError(f"{path}: not readable JSON ({exn})") from None
    return parse_config(raw, str(path), name or f"imported-{hf_dir.resolve().name}")


def with_video_token(cfg: HFConfig, video_token_id: int) -> HFConfig:
    """The same config with the vision tower's video placeholder id set (from the folder's tokenizer)."""
    if cfg.model.vision is None or video_token_id == cfg.model.vision.image_token_id:
        return cfg
    vision = replace(cfg.model.vision, video_token_id=video_token_id)
    return replace(cfg, model=replace(cfg.model, vision=vision))
