"""The one map between kimi_lab's tensors and a Hugging Face checkpoint's, with its per-tensor transforms.

Every conversion reads this map: the in-memory one (``in_memory``: transformers'
``deepseek_v3`` / ``kimi_k25`` models), the streamed import (``import_chunks``) and the
streamed export (``export_tensors``). A ``Relation`` ties kimi_lab tensors to HF tensors
in both directions; only the drivers differ (eager, chunk by chunk, slab by slab).

Layouts differ in four ways, all named by ``HFLayout``:
- Names: the released K2 is DeepSeek-V3's (``model.layers.N...``); the released K2.5
  nests it (``language_model.model...``) beside ``vision_tower.encoder.blocks.N`` and
  ``mm_projector.proj.{0,2}``; transformers' in-memory kimi_k25 uses
  ``model.language_model...`` / ``model.vision_tower.layers.N``.
- Grouping: SwiGLU gate and up ship separately (kimi_lab fuses them, ``w13``); routed
  experts ship one matrix per expert (kimi_lab stacks them) or, in transformers'
  in-memory model, as one (E, 2F, D) ``gate_up_proj``; the ViT's q, k, v ship fused
  (``wqkv``).
- Rotary rows: DeepSeek / Moonshot interleave each rotary pair, kimi_lab rotates
  halves, so those rows are permuted (also the ViT's q and k in ``wqkv``).
- Shapes: the ViT patch embedding is a Linear here and a Conv2d there; routed
  experts' down projection is (F, D) here and (D, F) there.
Quantized storage (FP8 block-scaled, INT4 compressed-tensors) is the ``quant``
module's: the import dequantizes any HF weight, the export may write the relations
marked ``quantizable`` (routed experts) as K2.5 ships them.

Legend: E experts, F expert FFN width, D model width.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from kimi_lab.config.schema import ModelConfig, VisionConfig
from kimi_lab.errors import ConfigError
from kimi_lab.hf.source import Source

Fn = Callable[[torch.Tensor], torch.Tensor]
OURS_LM = "language_model."  # KimiK25's language model; its vision tower and projector sit at the root

# kimi_lab name under attn. -> DeepSeek-V3 name under self_attn.
ATTN = {
    "q_proj": "q_proj",
    "q_a_proj": "q_a_proj",
    "q_a_norm": "q_a_layernorm",
    "q_b_proj": "q_b_proj",
    "kv_a_proj": "kv_a_proj_with_mqa",
    "kv_a_norm": "kv_a_layernorm",
    "kv_b_proj": "kv_b_proj",
    "o_proj": "o_proj",
}
# released K2.5 ViT block name (vision_tower.encoder.blocks.N.<theirs>) -> kimi_lab's
# (vision_tower.layers.N.<ours>); q, k and v are the fused wqkv
VIT_BLOCK = {"norm0": "norm1", "norm1": "norm2", "wo": "attn.proj", "mlp.fc0": "fc1", "mlp.fc1": "fc2"}
PROJ = {"pre_norm": "pre_norm", "proj.0": "in_proj", "proj.2": "out_proj"}
# transformers' in-memory kimi_k25 ViT layer name (model.vision_tower.layers.N.<theirs>) -> kimi_lab's
VIT_LAYER_TRANSFORMERS = {
    "norm1": "norm1",
    "norm2": "norm2",
    "attn.q_proj": "attn.q_proj",
    "attn.k_proj": "attn.k_proj",
    "attn.v_proj": "attn.v_proj",
    "attn.proj": "attn.proj",
    "mlp.fc1": "fc1",
    "mlp.fc2": "fc2",
}
PROJ_TRANSFORMERS = {"pre_norm": "pre_norm", "in_proj": "in_proj", "out_proj": "out_proj"}
# how transformers 5 (5.24) spells a few K2.5 names when it saves a kimi_k25 model
TRANSFORMERS_SAVE_PREFIXES = {
    "model.mm_projector.": "mm_projector.",
    "vision_tower.encoder.patch_embed.": "vision_tower.patch_embed.",
}


# ---------------------------------------------------------------------- transforms
@dataclass(frozen=True)
class Transform:
    """A reversible change of one tensor's layout: ``to_ours`` on import, ``to_theirs`` on export."""

    to_ours: Fn
    to_theirs: Fn


def deinterleave_rows(w: torch.Tensor, n_heads: int, head_dim: int, rope_dim: int) -> torch.Tensor:
    """Each head's rotary rows from pairs (x0, x1), (x2, x3), ... to halves (x0, x2, ..., x1, x3, ...)."""
    tail = w.shape[1:]
    w = w.reshape(n_heads, head_dim, -1)
    nope = head_dim - rope_dim
    rope = w[:, nope:]
    rope = torch.cat((rope[:, 0::2], rope[:, 1::2]), dim=1)
    return torch.cat((w[:, :nope], rope), dim=1).reshape(n_heads * head_dim, *tail)


def interleave_rows(w: torch.Tensor, n_heads: int, head_dim: int, rope_dim: int) -> torch.Tensor:
    """The inverse of ``deinterleave_rows`` (what DeepSeek-layout readers expect)."""
    tail = w.shape[1:]
    w = w.reshape(n_heads, head_dim, -1)
    nope = head_dim - rope_dim
    half = rope_dim // 2
    rope = w[:, nope:]
    rope = torch.stack((rope[:, :half], rope[:, half:]), dim=2).reshape(n_heads, rope_dim, -1)
    return torch.cat((w[:, :nope], rope), dim=1).reshape(n_heads * head_dim, *tail)


def rope_rows(n_heads: int, head_dim: int, rope_dim: int) -> Transform:
    """Interleaved rotary rows there, rotate-half rows here (the last ``rope_dim`` of each head)."""
    return Transform(
        lambda t: deinterleave_rows(t, n_heads, head_dim, rope_dim),
        lambda t: interleave_rows(t, n_heads, head_dim, rope_dim),
    )


def patch_embed(patch_size: int) -> Transform:
    """The ViT patch embedding: a Conv2d (D, 3, p, p) there, a Linear (D, 3 p p) here."""
    return Transform(lambda t: t.flatten(1), lambda t: t.reshape(t.shape[0], 3, patch_size, patch_size))


# one expert's matrix there, one (1, F, D) row of the stacked experts here
EXPERT = Transform(lambda t: t.unsqueeze(0), lambda t: t[0])
# an expert's down projection: (D, F) there, (F, D) here
EXPERT_DOWN = Transform(lambda t: t.T.unsqueeze(0), lambda t: t[0].T)
# transformers' fused down_proj: (E, D, F) there, (E, F, D) here
EXPERTS_DOWN = Transform(lambda t: t.transpose(1, 2), lambda t: t.transpose(1, 2))


# ----------------------------------------------------------------------- relations
@dataclass(frozen=True)
class Part:
    """One HF tensor (full name) and how its layout differs from our rows it fills."""

    theirs: str
    transform: Transform | None = None


@dataclass(frozen=True)
class Stack:
    """Our tensor ``ours`` is its HF ``parts`` stacked along dim 0, equal rows each (one part: a rename)."""

    ours: str
    parts: tuple[Part, ...]
    optional: bool = False  # an HF checkpoint may lack it: imported as zeros (selection biases)
    float32: bool = False  # exported at float32 whatever the export's dtype (K2.5 keeps the bias so)
    quantizable: bool = False  # a routed expert: the export may write it INT4, as K2.5 ships them
    alias: bool = False  # shares another tensor's HF tensor (a tied LM head): never exported


@dataclass(frozen=True)
class Split:
    """The HF tensor ``theirs`` is our tensors ``parts`` (each with its transform) concatenated on ``dim``."""

    theirs: str
    parts: tuple[tuple[str, Transform | None], ...]
    dim: int


Relation = Stack | Split


def same(ours: str, theirs: str, transform: Transform | None = None, **flags: bool) -> Stack:
    """Our tensor is one HF tensor (renamed, maybe transformed)."""
    return Stack(ours, (Part(theirs, transform),), **flags)


@dataclass(frozen=True)
class HFLayout:
    """Which spelling of the checkpoint a conversion reads or writes (see the module docstring)."""

    lm: str  # prefix of embed_tokens / layers / norm
    head: str | None  # the LM head's name; None when tied (the embeddings serve)
    vision: str  # "released", "transformers" or "" (no vision tower)
    fused_experts: bool  # transformers' in-memory (E, 2F, D) gate_up_proj, else one tensor per expert
    rope_interleave: bool  # rotary rows as DeepSeek's interleaved pairs
    layers: str = "layers"  # "blocks" in transformers 5's kimi_k25 save


def released_layout(cfg: ModelConfig) -> HFLayout:
    """What Moonshot ships (K2: DeepSeek-V3's names; K2.5: nested, with the release's ViT names)."""
    vl = cfg.vision is not None
    head = None if cfg.tie_embeddings else ("language_model.lm_head.weight" if vl else "lm_head.weight")
    lm = "language_model.model." if vl else "model."
    return HFLayout(lm, head, "released" if vl else "", fused_experts=False, rope_interleave=True)


def transformers_layout(cfg: ModelConfig, rope_interleave: bool = False) -> HFLayout:
    """transformers' in-memory ``DeepseekV3ForCausalLM`` / ``Kimi_K25ForConditionalGeneration``."""
    vl = cfg.vision is not None
    head = None if cfg.tie_embeddings else "lm_head.weight"
    lm = "model.language_model." if vl else "model."
    return HFLayout(lm, head, "transformers" if vl else "", True, rope_interleave)


def detect_layout(src: Source, cfg: ModelConfig, rope_interleave: bool) -> HFLayout:
    """The layout of a checkpoint, found from its tensor names (no data is read)."""
    for stored, canonical in TRANSFORMERS_SAVE_PREFIXES.items():
        src.rename_prefix(stored, canonical)
    for lm in ("model.", "language_model.model.", "model.language_model."):
        if f"{lm}embed_tokens.weight" in src:
            break
    else:
        raise ConfigError(
            f"{src.dir}: no embed_tokens.weight under model. / language_model.model. (not K2 / K2.5)"
        )
    layers = "blocks" if f"{lm}blocks.0.input_layernorm.weight" in src else "layers"
    head = next((h for h in ("lm_head.weight", "language_model.lm_head.weight") if h in src), None)
    if head is None and not cfg.tie_embeddings:
        raise ConfigError(f"{src.dir}: no lm_head.weight and tie_word_embeddings is false")
    vision = ""
    if cfg.vision is not None:
        if "vision_tower.encoder.blocks.0.wqkv.weight" in src:
            vision = "released"
        elif "model.vision_tower.layers.0.attn.q_proj.weight" in src:
            vision = "transformers"
        else:
            raise ConfigError(
                f"{src.dir}: the config has a vision tower but the checkpoint has no ViT blocks"
            )
    fused = f"{lm}{layers}.{cfg.first_k_dense}.mlp.experts.gate_up_proj" in src
    return HFLayout(lm, head, vision, fused, rope_interleave, layers)


def relations(cfg: ModelConfig, layout: HFLayout) -> list[Relation]:
    """Every kimi_lab tensor of a ``cfg`` model tied to the HF tensors of ``layout``, in the
    order an export writes them."""
    out = _language_model(cfg, layout)
    if layout.vision == "released":
        out += _vision_released(cfg.vision)  # type: ignore[arg-type]
    elif layout.vision == "transformers":
        out += _vision_transformers(cfg.vision)  # type: ignore[arg-type]
    return out


class Driver(Protocol):
    """One direction of a conversion: what it does with each kind of relation."""

    def stack(self, r: Stack) -> None: ...

    def split(self, r: Split) -> None: ...


def walk(cfg: ModelConfig, layout: HFLayout, driver: Driver) -> None:
    """Hand every relation of the map to ``driver``, in the map's order."""
    for r in relations(cfg, layout):
        if isinstance(r, Stack):
            driver.stack(r)
        else:
            driver.split(r)


def _attention_rope(cfg: ModelConfig, theirs: str) -> Transform | None:
    """The rotary-row permutation an attention weight needs (q, and the shared key after the latent)."""
    a = cfg.attention
    if theirs in ("q_proj", "q_b_proj"):
        return rope_rows(a.n_heads, a.qk_nope_head_dim + a.qk_rope_head_dim, a.qk_rope_head_dim)
    if theirs == "kv_a_proj_with_mqa":
        return rope_rows(1, a.kv_lora_rank + a.qk_rope_head_dim, a.qk_rope_head_dim)
    return None


def _swiglu(s: str, d: str) -> list[Relation]:
    """A dense or shared SwiGLU: gate and up stacked into w13, down as w2."""
    gate_up = (Part(s + "gate_proj.weight"), Part(s + "up_proj.weight"))
    return [Stack(d + "w13.weight", gate_up), same(d + "w2.weight", s + "down_proj.weight")]


def _experts(cfg: ModelConfig, layout: HFLayout, s: str, d: str) -> list[Relation]:
    """Routed experts, stacked (E, F, D) here."""
    if layout.fused_experts:
        split = Split(s + "gate_up_proj", ((d + "w1", None), (d + "w3", None)), dim=1)
        return [split, same(d + "w2", s + "down_proj", EXPERTS_DOWN)]
    n = range(cfg.moe.n_routed_experts)
    return [
        Stack(d + ours, tuple(Part(f"{s}{e}.{theirs}.weight", tr) for e in n), quantizable=True)
        for ours, theirs, tr in (
            ("w1", "gate_proj", EXPERT),
            ("w3", "up_proj", EXPERT),
            ("w2", "down_proj", EXPERT_DOWN),
        )
    ]


def _language_model(cfg: ModelConfig, layout: HFLayout) -> list[Relation]:
    lm, d0 = layout.lm, OURS_LM
    out: list[Relation] = [same(d0 + "embed.weight", lm + "embed_tokens.weight")]
    low_rank_q = cfg.attention.q_lora_rank is not None
    for i in range(cfg.n_layers):
        s, d = f"{lm}{layout.layers}.{i}.", f"{d0}layers.{i}."
        out.append(same(d + "attn_norm.weight", s + "input_layernorm.weight"))
        for ours, theirs in ATTN.items():
            if ours.startswith("q_") and (ours == "q_proj") == low_rank_q:
                continue  # q_proj, or q_a / q_b: whichever this model has
            rope = _attention_rope(cfg, theirs) if layout.rope_interleave else None
            out.append(same(f"{d}attn.{ours}.weight", f"{s}self_attn.{theirs}.weight", rope))
        out.append(same(d + "ffn_norm.weight", s + "post_attention_layernorm.weight"))
        if i < cfg.first_k_dense:
            out += _swiglu(s + "mlp.", d + "ffn.")
            continue
        out.append(same(d + "ffn.router.weight", s + "mlp.gate.weight"))
        bias = s + "mlp.gate.e_score_correction_bias"
        out.append(same(d + "ffn.router.expert_bias", bias, optional=True, float32=True))
        out += _experts(cfg, layout, s + "mlp.experts.", d + "ffn.experts.")
        if cfg.moe.n_shared_experts > 0:
            out += _swiglu(s + "mlp.shared_experts.", d + "ffn.shared.")
    out.append(same(d0 + "norm.weight", lm + "norm.weight"))
    if layout.head is not None:
        out.append(same(d0 + "lm_head.weight", layout.head))
    else:  # tied: the head is the embeddings
        out.append(same(d0 + "lm_head.weight", lm + "embed_tokens.weight", alias=True))
    return out


def _vision_released(v: VisionConfig) -> list[Relation]:
    enc = "vision_tower.encoder."
    out: list[Relation] = [
        same("vision_tower.pos_emb", "vision_tower.patch_embed.pos_emb.weight"),
        same(
            "vision_tower.patch_embed.weight",
            "vision_tower.patch_embed.proj.weight",
            patch_embed(v.patch_size),
        ),
        same("vision_tower.patch_embed.bias", "vision_tower.patch_embed.proj.bias"),
    ]
    hd = v.hidden_size // v.n_heads
    rope = rope_rows(v.n_heads, hd, hd)  # the release keeps q and k rows as interleaved rotary pairs
    for i in range(v.n_layers):
        s, d = f"{enc}blocks.{i}.", f"vision_tower.layers.{i}."
        for suffix in ("weight", "bias"):
            out += [
                same(f"{d}{ours}.{suffix}", f"{s}{theirs}.{suffix}") for theirs, ours in VIT_BLOCK.items()
            ]
            qkv = tuple(
                (f"{d}attn.{n}.{suffix}", rope if n != "v_proj" else None)
                for n in ("q_proj", "k_proj", "v_proj")
            )
            out.append(Split(f"{s}wqkv.{suffix}", qkv, dim=0))
    for suffix in ("weight", "bias"):
        out.append(same(f"vision_tower.final_norm.{suffix}", f"{enc}final_layernorm.{suffix}"))
        out += [
            same(f"projector.{ours}.{suffix}", f"mm_projector.{theirs}.{suffix}")
            for theirs, ours in PROJ.items()
        ]
    return out


def _vision_transformers(v: VisionConfig) -> list[Relation]:
    vt = "model.vision_tower."
    out: list[Relation] = [
        same("vision_tower.pos_emb", vt + "patch_embed.pos_emb.position_embeddings"),
        same("vision_tower.patch_embed.weight", vt + "patch_embed.proj.weight", patch_embed(v.patch_size)),
        same("vision_tower.patch_embed.bias", vt + "patch_embed.proj.bias"),
    ]
    for suffix in ("weight", "bias"):
        out.append(same(f"vision_tower.final_norm.{suffix}", f"{vt}final_layernorm.{suffix}"))
        for i in range(v.n_layers):
            s, d = f"{vt}layers.{i}.", f"vision_tower.layers.{i}."
            out += [
                same(f"{d}{ours}.{suffix}", f"{s}{theirs}.{suffix}")
                for theirs, ours in VIT_LAYER_TRANSFORMERS.items()
            ]
        out += [
            same(f"projector.{ours}.{suffix}", f"model.mm_projector.{theirs}.{suffix}")
            for theirs, ours in PROJ_TRANSFORMERS.items()
        ]
    return out
