"""config.json <-> kimi_lab's ModelConfig, both directions, without transformers.

Three dialects say the same thing: transformers' own ``deepseek_v3`` / ``kimi_k25``
configs, Moonshot's released ``kimi_k2`` (K2, K2-Instruct-0905: ``rope_scaling`` +
``rope_theta``) and the released ``kimi_k25`` (a ``vision_config`` with ``vt_*`` names,
``media_placeholder_token_id``). Reading normalises each to transformers' names and
maps them to ours through ``TEXT_KEYS`` / ``VISION_KEYS``; writing maps ours to
transformers' names through the same tables (what transformers' model classes take)
and, for an export, adds the release's spellings beside them (what serving engines
that load the released K2 / K2.5 read).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from kimi_lab.config.schema import (
    AttentionConfig,
    ModelConfig,
    MoEConfig,
    RopeConfig,
    RopeScaling,
    VisionConfig,
)
from kimi_lab.errors import ConfigError
from kimi_lab.hf import quant

TEXT_TYPES = ("deepseek_v3", "kimi_k2")
VISION_TYPES = ("kimi_k25",)

# transformers' DeepseekV3Config key -> where ModelConfig keeps it
TEXT_KEYS = {
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "intermediate_size": "dense_ffn_dim",
    "moe_intermediate_size": "moe.expert_ffn_dim",
    "num_hidden_layers": "n_layers",
    "num_attention_heads": "attention.n_heads",
    "n_shared_experts": "moe.n_shared_experts",
    "n_routed_experts": "moe.n_routed_experts",
    "routed_scaling_factor": "moe.routed_scaling_factor",
    "kv_lora_rank": "attention.kv_lora_rank",
    "q_lora_rank": "attention.q_lora_rank",
    "qk_rope_head_dim": "attention.qk_rope_head_dim",
    "v_head_dim": "attention.v_head_dim",
    "qk_nope_head_dim": "attention.qk_nope_head_dim",
    "num_experts_per_tok": "moe.top_k",
    "first_k_dense_replace": "first_k_dense",
    "max_position_embeddings": "max_seq_len",
    "rms_norm_eps": "norm_eps",
    "initializer_range": "init_std",
}
# transformers' yarn rope_parameters key -> RopeConfig field
YARN_KEYS = {
    "factor": "factor",
    "original_max_position_embeddings": "original_max_seq_len",
    "beta_fast": "beta_fast",
    "beta_slow": "beta_slow",
    "mscale": "mscale",
    "mscale_all_dim": "mscale_all_dim",
}
# transformers' Kimi_K25VisionConfig key -> VisionConfig field
VISION_KEYS = {
    "patch_size": "patch_size",
    "pos_emb_height": "pos_emb_size",
    "pos_emb_time": "pos_emb_time",
    "num_attention_heads": "n_heads",
    "num_hidden_layers": "n_layers",
    "hidden_size": "hidden_size",
    "intermediate_size": "ffn_dim",
}
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


def _get(obj: Any, path: str) -> Any:
    for name in path.split("."):
        obj = getattr(obj, name)
    return obj


# --------------------------------------------------------------------- ours -> theirs
def deepseek_v3_config_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    """transformers' ``DeepseekV3Config`` of the language model (rotate-half RoPE, as kimi_lab's)."""
    r = cfg.attention.rope
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": r.theta}
    if r.scaling == RopeScaling.yarn:
        rope = {"rope_type": "yarn", "rope_theta": r.theta, **{k: _get(r, f) for k, f in YARN_KEYS.items()}}
    return {
        **{theirs: _get(cfg, ours) for theirs, ours in TEXT_KEYS.items()},
        "num_key_value_heads": cfg.attention.n_heads,
        "n_group": 1,
        "topk_group": 1,
        "norm_topk_prob": True,
        "tie_word_embeddings": cfg.tie_embeddings,
        "rope_parameters": rope,
        "rope_interleave": False,
        "attention_bias": False,
    }


def kimi_k25_config_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    """transformers' ``Kimi_K25Config`` of a model with a vision tower."""
    v = cfg.vision
    assert v is not None
    return {
        "text_config": {"model_type": "deepseek_v3", **deepseek_v3_config_kwargs(cfg)},
        "vision_config": {
            **{theirs: _get(v, ours) for theirs, ours in VISION_KEYS.items()},
            "pos_emb_width": v.pos_emb_size,
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


def export_config(cfg: ModelConfig, dtype: str, quantize: str | None) -> dict[str, Any]:
    """The config.json of an export: transformers loads it; the release's keys ride along."""
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
    out = text
    if cfg.vision is not None:
        v = cfg.vision
        out = kimi_k25_config_kwargs(cfg)
        out["text_config"] = text
        out["architectures"] = ["Kimi_K25ForConditionalGeneration"]
        out["model_type"] = "kimi_k25"
        out["media_placeholder_token_id"] = v.image_token_id
        vision = out["vision_config"]
        vision.update({alias: vision[theirs] for alias, theirs in VISION_ALIASES.items()})
        vision.update(
            mm_hidden_size=v.hidden_size,
            text_hidden_size=cfg.hidden_size,
            projector_ln_eps=v.norm_eps,
            **VISION_FIXED,
        )
    out["dtype"] = dtype
    if quantize == "int4":
        out["quantization_config"] = quant.int4_quantization_config()
    return out


# --------------------------------------------------------------------- theirs -> ours
def model_config_from_hf(hf_config: Any, name: str = "imported") -> tuple[ModelConfig, bool]:
    """(ModelConfig, rope_interleave) from a ``DeepseekV3Config`` or ``Kimi_K25Config`` (or the
    namespaces ``parse_config`` makes of a config.json)."""
    c = getattr(hf_config, "text_config", None) or hf_config
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
    fields: dict[str, dict[str, Any]] = {"": {}, "attention": {"rope": rope}, "moe": {}}
    for theirs, ours in TEXT_KEYS.items():
        group, _, field = ours.rpartition(".")
        fields[group][field] = (
            getattr(c, theirs) if theirs != "initializer_range" else getattr(c, theirs, 0.02)
        )
    fields["moe"]["routed_scaling_factor"] = float(fields["moe"]["routed_scaling_factor"])
    tied = getattr(hf_config, "tie_word_embeddings", False) or getattr(c, "tie_word_embeddings", False)
    cfg = ModelConfig(
        name=name,
        tie_embeddings=bool(tied),
        attention=AttentionConfig(**fields["attention"]),
        moe=MoEConfig(**fields["moe"]),
        **fields[""],
    )
    vc = getattr(hf_config, "vision_config", None)
    if vc is not None:
        kh, kw = vc.merge_kernel_size
        if kh != kw or vc.pos_emb_height != vc.pos_emb_width:
            raise ConfigError("only square merge kernels and position grids are supported")
        if vc.hidden_act != "gelu_pytorch_tanh":
            raise ConfigError(f"vision hidden_act={vc.hidden_act!r} is not supported (gelu_pytorch_tanh)")
        vision = VisionConfig(
            **{ours: getattr(vc, theirs) for theirs, ours in VISION_KEYS.items()},
            merge_size=kh,
            rope_theta=float((vc.rope_parameters or {}).get("rope_theta", 10000.0)),
            norm_eps=hf_config.projection_layer_norm_eps,
            image_token_id=hf_config.image_token_id,
            video_token_id=hf_config.video_token_id,
        )
        cfg = replace(cfg, vision=vision)
    return cfg, bool(getattr(c, "rope_interleave", False))


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
        quantization = raw.get("quantization_config") or text.get("quantization_config")
        text_raw = text
    elif model_type in TEXT_TYPES or raw.get("architectures") == ["DeepseekV3ForCausalLM"]:
        ns = _text_namespace(raw, where)
        normalised = "deepseek_v3"
        quantization = raw.get("quantization_config")
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
        quantization=quantization,
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
