"""Which Hugging Face tensors make each kimi_lab tensor (the import direction), chunk by chunk.

Layouts differ in three ways. Names: the released K2 is DeepSeek-V3's
(``model.layers.N...``); the released K2.5 nests it (``language_model.model...``)
beside ``vision_tower.encoder.blocks.N`` and ``mm_projector.proj.{0,2}``; transformers'
in-memory kimi_k25 uses ``model.language_model...`` / ``model.vision_tower.layers.N``.
Grouping: routed experts ship one matrix per expert (kimi_lab stacks them, (E, F, D));
SwiGLU gate and up ship separately (kimi_lab fuses them, ``w13``); the ViT's q, k, v
ship fused (``wqkv``). Rotary rows: DeepSeek / Moonshot interleave each rotary pair,
kimi_lab rotates halves, so those rows are permuted. Each kimi_lab tensor becomes a
list of ``Chunk``s (an expert's slab, a gate or up half) read only when written.

Legend: E experts, F expert FFN width, D model width.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from kimi_lab.config.schema import ModelConfig, VisionConfig
from kimi_lab.errors import ConfigError
from kimi_lab.hf.config import HFConfig
from kimi_lab.hf.dcp_stream import Chunk
from kimi_lab.hf.source import Source
from kimi_lab.model.hf import ATTN_NAMES as ATTN  # kimi_lab name -> DeepSeek-V3 name under self_attn.

# released K2.5 ViT block names (vision_tower.encoder.blocks.N.<theirs>) -> kimi_lab's
# (vision_tower.layers.N.<ours>)
VIT_BLOCK = {"norm0": "norm1", "norm1": "norm2", "wo": "attn.proj", "mlp.fc0": "fc1", "mlp.fc1": "fc2"}
PROJ = {"pre_norm": "pre_norm", "proj.0": "in_proj", "proj.2": "out_proj"}
# the stored parts of a weight: plain, FP8 (+ block scales), INT4 (packed, scales, shape)
WEIGHT_PARTS = ("weight", "weight_scale_inv", "weight_packed", "weight_scale", "weight_shape")


@dataclass(frozen=True)
class Names:
    """Where this folder keeps the language model and the vision tower."""

    lm: str  # prefix of embed_tokens / layers / norm
    layers: str  # "layers" (everyone) or "blocks" (transformers 5's kimi_k25 save)
    head: str | None  # the LM head's name; None when tied
    vision: str  # "released", "transformers" or "" (no vision tower)


# how transformers 5 (5.24) spells a few K2.5 names when it saves a kimi_k25 model
TRANSFORMERS_SAVE_PREFIXES = {
    "model.mm_projector.": "mm_projector.",
    "vision_tower.encoder.patch_embed.": "vision_tower.patch_embed.",
}


def detect_names(src: Source, cfg: ModelConfig) -> Names:
    """Find the layout from the tensor names (no data is read)."""
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
    return Names(lm, layers, head, vision)


def deinterleave_rows(w: torch.Tensor, n_heads: int, head_dim: int, rope_dim: int) -> torch.Tensor:
    """Each head's rotary rows from pairs (x0, x1), (x2, x3), ... to halves (x0, x2, ..., x1, x3, ...)."""
    tail = w.shape[1:]
    w = w.reshape(n_heads, head_dim, -1)
    nope = head_dim - rope_dim
    rope = w[:, nope:]
    rope = torch.cat((rope[:, 0::2], rope[:, 1::2]), dim=1)
    return torch.cat((w[:, :nope], rope), dim=1).reshape(n_heads * head_dim, *tail)


def interleave_rows(w: torch.Tensor, n_heads: int, head_dim: int, rope_dim: int) -> torch.Tensor:
    """The inverse of ``deinterleave_rows`` (what export writes for DeepSeek-layout readers)."""
    tail = w.shape[1:]
    w = w.reshape(n_heads, head_dim, -1)
    nope = head_dim - rope_dim
    half = rope_dim // 2
    rope = w[:, nope:]
    rope = torch.stack((rope[:, :half], rope[:, half:]), dim=2).reshape(n_heads, rope_dim, -1)
    return torch.cat((w[:, :nope], rope), dim=1).reshape(n_heads * head_dim, *tail)


class _Plan:
    """Collects chunks for the kimi_lab tensors of one model."""

    def __init__(
        self,
        src: Source,
        shapes: dict[str, tuple[int, ...]],
        dtype: torch.dtype,
        prefix: str,
        slab_bytes: int,
    ) -> None:
        self.src, self.shapes, self.dtype, self.prefix = src, shapes, dtype, prefix
        self.slab_bytes = slab_bytes
        self.chunks: list[Chunk] = []
        self.used: set[str] = set()

    def add(
        self,
        ours: str,
        make: Callable[[], torch.Tensor],
        bases: tuple[str, ...],
        offset: int = 0,
        rows: int | None = None,
    ) -> None:
        if ours not in self.shapes:
            raise ConfigError(f"kimi_lab's model has no tensor {ours} (the layout mapping is out of date)")
        for b in bases:
            if not (self.src.has_weight(b) or b in self.src):
                raise ConfigError(f"{self.src.dir}: the checkpoint lacks {b} (needed for {ours})")
            self.used.update(n for n in (b, *(f"{b}.{x}" for x in WEIGHT_PARTS)) if n in self.src)
        size = self.shapes[ours]
        files = tuple(f for b in bases for f in self.src.files_of(b))
        self.chunks.append(
            Chunk(
                self.prefix + ours, size, self.dtype, offset, size[0] if rows is None else rows, make, files
            )
        )

    def weight(self, ours: str, base: str, fn: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        if fn is None and self._slabs(ours, base, 0, self.shapes.get(ours, (0,))[0]):
            return
        self.add(ours, lambda: (fn or (lambda t: t))(self.src.weight(base)), (base,))

    def _slabs(self, ours: str, base: str, offset: int, rows: int) -> bool:
        """A big matrix (embeddings, LM head, a dense FFN) converted in slabs of rows, never whole,
        placed at rows [offset, offset + rows) of ``ours``; FP8 slabs span whole blocks of rows,
        so each reads only its own scales. False (nothing added) when the matrix is small or INT4."""
        size = self.shapes.get(ours, ())
        if len(size) != 2 or f"{base}.weight_packed" in self.src:
            return False
        row_bytes = 4 * size[1]
        if rows * row_bytes <= self.slab_bytes:
            return False
        step = max(1, self.slab_bytes // row_bytes)
        if self.src.is_quantized(base):
            bo = self.src.fp8_block[0]
            step = max(bo, step // bo * bo)
        for start in range(0, rows, step):
            stop = min(rows, start + step)
            make = lambda a=start, b=stop: self.src.weight_rows(base, a, b)  # noqa: E731
            self.add(ours, make, (base,), offset=offset + start, rows=stop - start)
        return True

    def tensor(self, ours: str, name: str, fn: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> None:
        self.add(ours, lambda: fn(self.src.tensor(name)), (name,))

    def rows(self, ours: str, parts: list[tuple[str, Callable[[], torch.Tensor]]]) -> None:
        """A tensor stacked from parts along dim 0 (each part's rows from its make())."""
        n = self.shapes[ours][0] // len(parts)
        for i, (base, make) in enumerate(parts):
            self.add(ours, make, (base,), offset=i * n, rows=n)


def _language_model(p: _Plan, hf: HFConfig, names: Names) -> None:
    cfg, src = hf.model, p.src
    lm, d0 = names.lm, "language_model."
    p.weight(d0 + "embed.weight", lm + "embed_tokens")
    p.weight(d0 + "norm.weight", lm + "norm")
    head = names.head[: -len(".weight")] if names.head else lm + "embed_tokens"
    p.weight(d0 + "lm_head.weight", head)
    for i in range(cfg.n_layers):
        s, d = f"{lm}{names.layers}.{i}.", f"{d0}layers.{i}."
        p.weight(d + "attn_norm.weight", s + "input_layernorm")
        p.weight(d + "ffn_norm.weight", s + "post_attention_layernorm")
        for ours, theirs in ATTN.items():
            base = f"{s}self_attn.{theirs}"
            if not src.has_weight(base):
                continue
            p.weight(f"{d}attn.{ours}.weight", base, _rope_rows(cfg, theirs) if hf.rope_interleave else None)
        if i < cfg.first_k_dense:
            _swiglu(p, s + "mlp.", d + "ffn.")
            continue
        p.weight(d + "ffn.router.weight", s + "mlp.gate")
        bias = s + "mlp.gate.e_score_correction_bias"
        if bias in src:
            p.tensor(d + "ffn.router.expert_bias", bias)
        else:  # a checkpoint without selection biases starts them at zero
            p.add(d + "ffn.router.expert_bias", lambda: torch.zeros(cfg.moe.n_routed_experts), ())
        _experts(p, cfg, s + "mlp.experts.", d + "ffn.experts.")
        if cfg.moe.n_shared_experts > 0:
            _swiglu(p, s + "mlp.shared_experts.", d + "ffn.shared.")


def _rope_rows(cfg: ModelConfig, theirs: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The row permutation an attention weight needs out of DeepSeek's interleaved layout."""
    a = cfg.attention
    if theirs in ("q_proj", "q_b_proj"):
        heads, head_dim = a.n_heads, a.qk_nope_head_dim + a.qk_rope_head_dim
    elif theirs == "kv_a_proj_with_mqa":  # the shared rotary key sits after the latent
        heads, head_dim = 1, a.kv_lora_rank + a.qk_rope_head_dim
    else:
        return None
    return lambda t: deinterleave_rows(t, heads, head_dim, a.qk_rope_head_dim)


def _swiglu(p: _Plan, s: str, d: str) -> None:
    """Dense / shared SwiGLU: gate and up stacked into w13 (two chunks, or slabs of each), down as w2."""
    half = p.shapes[d + "w13.weight"][0] // 2
    for i, n in enumerate(("gate_proj", "up_proj")):
        if not p._slabs(d + "w13.weight", s + n, i * half, half):
            p.add(d + "w13.weight", lambda n=n: p.src.weight(s + n), (s + n,), offset=i * half, rows=half)
    p.weight(d + "w2.weight", s + "down_proj")


def _experts(p: _Plan, cfg: ModelConfig, s: str, d: str) -> None:
    """Routed experts stacked (E, F, D): one chunk per expert, or the fused (E, 2F, D) tensors."""
    src, n = p.src, cfg.moe.n_routed_experts
    if f"{s}gate_up_proj" in src:  # transformers' fused in-memory layout, saved as is
        f = cfg.moe.expert_ffn_dim
        p.add(d + "w1", lambda: src.tensor(f"{s}gate_up_proj")[:, :f], (f"{s}gate_up_proj",))
        p.add(d + "w3", lambda: src.tensor(f"{s}gate_up_proj")[:, f:], (f"{s}gate_up_proj",))
        p.add(d + "w2", lambda: src.tensor(f"{s}down_proj").transpose(1, 2), (f"{s}down_proj",))
        return
    for ours, theirs, transpose in (
        ("w1", "gate_proj", False),
        ("w3", "up_proj", False),
        ("w2", "down_proj", True),
    ):
        parts = []
        for e in range(n):
            base = f"{s}{e}.{theirs}"
            parts.append(
                (base, lambda b=base, t=transpose: (src.weight(b).T if t else src.weight(b)).unsqueeze(0))
            )
        p.rows(d + ours, parts)


def _vision_released(p: _Plan, v: VisionConfig) -> None:
    enc = "vision_tower.encoder."
    p.tensor("vision_tower.pos_emb", "vision_tower.patch_embed.pos_emb.weight")
    p.weight("vision_tower.patch_embed.weight", "vision_tower.patch_embed.proj", lambda t: t.flatten(1))
    p.tensor("vision_tower.patch_embed.bias", "vision_tower.patch_embed.proj.bias")
    hd = v.hidden_size // v.n_heads
    for i in range(v.n_layers):
        s, d = f"{enc}blocks.{i}.", f"vision_tower.layers.{i}."
        for theirs, ours in VIT_BLOCK.items():
            p.weight(f"{d}{ours}.weight", s + theirs)
            p.tensor(f"{d}{ours}.bias", f"{s}{theirs}.bias")
        for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
            rope = name != "v_proj"  # q and k ship with interleaved rotary pairs

            def part(t: torch.Tensor, j: int = j, rope: bool = rope) -> torch.Tensor:
                t = t.chunk(3, dim=0)[j]
                return deinterleave_rows(t, v.n_heads, hd, hd) if rope else t

            p.weight(f"{d}attn.{name}.weight", s + "wqkv", part)
            p.tensor(f"{d}attn.{name}.bias", s + "wqkv.bias", part)
    p.weight("vision_tower.final_norm.weight", enc + "final_layernorm")
    p.tensor("vision_tower.final_norm.bias", enc + "final_layernorm.bias")
    for theirs, ours in PROJ.items():
        p.weight(f"projector.{ours}.weight", f"mm_projector.{theirs}")
        p.tensor(f"projector.{ours}.bias", f"mm_projector.{theirs}.bias")


def _vision_transformers(p: _Plan, v: VisionConfig) -> None:
    from kimi_lab.model.hf import _vision_pairs

    for ours, theirs in _vision_pairs(v):
        p.tensor(ours, theirs)
    p.weight("vision_tower.patch_embed.weight", "model.vision_tower.patch_embed.proj", lambda t: t.flatten(1))


def import_chunks(
    hf: HFConfig,
    src: Source,
    shapes: dict[str, tuple[int, ...]],
    dtype: torch.dtype,
    prefix: str,
    slab_bytes: int = 256 << 20,
) -> tuple[list[Chunk], list[str]]:
    """Every chunk of every tensor of kimi_lab's model (checking the mapping covers the model
    exactly), and the checkpoint's tensors no chunk reads (multi-token-prediction layers, ...)."""
    names = detect_names(src, hf.model)
    p = _Plan(src, shapes, dtype, prefix, slab_bytes)
    _language_model(p, hf, names)
    if names.vision == "released":
        _vision_released(p, hf.model.vision)  # type: ignore[arg-type]
    elif names.vision == "transformers":
        _vision_transformers(p, hf.model.vision)  # type: ignore[arg-type]
    made = {c.fqn[len(prefix) :] for c in p.chunks}
    missing = sorted(set(shapes) - made)
    if missing:
        raise ConfigError(f"no HF source for kimi_lab's {missing[0]} (and {len(missing) - 1} more)")
    used = {src.stored_name.get(n, n) for n in p.used}
    stored = set(src.weight_map) - set(src.stored_name)
    return p.chunks, sorted(stored - used)
