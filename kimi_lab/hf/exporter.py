"""``kimi-lab export-hf``: a kimi_lab checkpoint -> the layout Moonshot releases, streamed.

Writes what K2 / K2.5 ship: DeepSeek-V3 names with one tensor per routed expert
(``model.layers.N.mlp.experts.E.gate_proj.weight``), interleaved rotary rows, and
for a model with a vision tower the K2.5 names (``language_model.model...``,
``vision_tower.encoder.blocks.N.wqkv``, ``mm_projector.proj.{0,2}``) and a config.json
that carries both transformers' and the release's (``vt_*``) vision keys. With
``quantize="int4"`` the routed experts are written as K2.5 ships them
(compressed-tensors pack-quantized, symmetric, groups of 32, bf16 scales) under
K2.5's quantization_config, so engines that serve K2.5 serve the export the same
way. The tokenizer goes with it, with the ``tokenizer_config.json`` (end-of-text, padding,
kimi_lab's chat template) and ``generation_config.json`` (stop ids) that HF tools need
(``tokenizer_files``). Tensors are read from the checkpoint a slab at a time (a sharded folder
through torch.distributed.checkpoint, a file memory-mapped) and written into
size-capped safetensors shards with an index.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from kimi_lab.config.schema import ModelConfig, RunConfig, VisionConfig
from kimi_lab.errors import ConfigError
from kimi_lab.hf import quant
from kimi_lab.hf.export_config import hf_config
from kimi_lab.hf.layout import ATTN, PROJ, VIT_BLOCK, interleave_rows
from kimi_lab.hf.shards import OutTensor, write_shards
from kimi_lab.hf.tokenizer_files import write_tokenizer_files
from kimi_lab.loading import PREFIX

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class CheckpointReader:
    """Rows of a kimi_lab checkpoint's tensors: a sharded folder slice by slice, a file memory-mapped."""

    def __init__(self, path: Path, slab_bytes: int = 256 << 20) -> None:
        self.path, self.slab_bytes = path, slab_bytes
        self._slab: tuple[str, int, torch.Tensor] | None = None  # (name, first row, rows) last read
        if path.is_dir():
            from kimi_lab.hf.dcp_stream import SliceReader

            self.sharded: Any = SliceReader(path)
            self.state: dict[str, torch.Tensor] | None = None
        else:
            from kimi_lab.loading import read_checkpoint

            self.sharded = None
            _, self.state, _ = read_checkpoint(path)  # memory-mapped: pages are read when used

    def shape(self, name: str) -> tuple[int, ...]:
        if self.state is not None:
            return tuple(self.state[name].shape)
        return self.sharded.shape("state_dict." + PREFIX + name)

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of a tensor (as float32), served from a cached slab when possible."""
        if self.state is not None:
            return self.state[name][start:stop].float()
        s = self._slab
        if s is None or s[0] != name or not (s[1] <= start and stop <= s[1] + s[2].shape[0]):
            shape = self.shape(name)
            row_bytes = 4 * max(1, int(torch.tensor(shape[1:]).prod()) if len(shape) > 1 else 1)
            end = max(stop, min(shape[0], start + max(1, self.slab_bytes // row_bytes)))
            s = self._slab = (
                name,
                start,
                self.sharded.read("state_dict." + PREFIX + name, start, end).float(),
            )
        return s[2][start - s[1] : stop - s[1]]

    def whole(self, name: str) -> torch.Tensor:
        return self.rows(name, 0, self.shape(name)[0])


class _Plan:
    """The output tensors, in order, each with how to make it from the reader."""

    def __init__(self, reader: CheckpointReader, dtype: torch.dtype, slab_bytes: int) -> None:
        self.reader, self.dtype, self.slab_bytes = reader, dtype, slab_bytes
        self.out: list[OutTensor] = []
        self._int4: tuple[str, dict[str, torch.Tensor]] | None = None

    def put(
        self, name: str, shape: tuple[int, ...], make: Callable[[], torch.Tensor], dtype: Any = None
    ) -> None:
        dtype = dtype or self.dtype
        self.out.append(OutTensor(name, tuple(shape), dtype, [lambda: make().to(dtype)]))

    def copy(self, name: str, ours: str, fn: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """A kimi_lab tensor under an HF name; big plain ones go in slabs of rows."""
        shape = self.reader.shape(ours)
        row_bytes = 4 * (int(torch.tensor(shape[1:]).prod()) if len(shape) > 1 else 1)
        if fn is None and len(shape) == 2 and shape[0] * row_bytes > self.slab_bytes:
            step = max(1, self.slab_bytes // row_bytes)
            parts = [
                (lambda a=a: self.reader.rows(ours, a, min(shape[0], a + step)).to(self.dtype))
                for a in range(0, shape[0], step)
            ]
            self.out.append(OutTensor(name, shape, self.dtype, parts))
            return
        out_shape = tuple(fn(torch.empty(shape, device="meta")).shape) if fn else shape
        self.put(name, out_shape, lambda: (fn or (lambda t: t))(self.reader.whole(ours)))

    def expert(self, stem: str, ours: str, e: int, transpose: bool, int4: Any) -> None:
        """One routed expert's matrix; as weight_packed / weight_scale / weight_shape when INT4."""
        full = self.reader.shape(ours)
        shape = (full[2], full[1]) if transpose else (full[1], full[2])

        def weight() -> torch.Tensor:
            w = self.reader.rows(ours, e, e + 1)[0]
            return w.T.contiguous() if transpose else w

        if int4 is None:
            self.put(stem + ".weight", shape, weight)
            return

        def packed(part: str) -> torch.Tensor:
            if self._int4 is None or self._int4[0] != stem:  # the three parts share one quantization
                self._int4 = (stem, quant.int4_quantize(weight(), int4))
            return self._int4[1][part]

        rows, cols = shape
        g = int4.weights.group_size
        self.put(
            stem + ".weight_packed", (rows, cols * 4 // 32), lambda: packed("weight_packed"), torch.int32
        )
        self.put(stem + ".weight_scale", (rows, cols // g), lambda: packed("weight_scale"), torch.bfloat16)
        self.put(stem + ".weight_shape", (2,), lambda: packed("weight_shape"), torch.int32)


def _rope(cfg: ModelConfig, theirs: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
    a = cfg.attention
    if theirs in ("q_proj", "q_b_proj"):
        heads, dim = a.n_heads, a.qk_nope_head_dim + a.qk_rope_head_dim
    elif theirs == "kv_a_proj_with_mqa":
        heads, dim = 1, a.kv_lora_rank + a.qk_rope_head_dim
    else:
        return None
    return lambda t: interleave_rows(t, heads, dim, a.qk_rope_head_dim)


def _language_model(p: _Plan, cfg: ModelConfig, lm: str, head: str, int4: Any) -> None:
    have = p.reader.shape
    p.copy(lm + "embed_tokens.weight", "language_model.embed.weight")
    for i in range(cfg.n_layers):
        s, d = f"language_model.layers.{i}.", f"{lm}layers.{i}."
        p.copy(d + "input_layernorm.weight", s + "attn_norm.weight")
        for ours, theirs in ATTN.items():
            try:
                have(f"{s}attn.{ours}.weight")
            except (KeyError, ConfigError):
                continue  # q_proj or q_a/q_b: whichever this model has
            p.copy(f"{d}self_attn.{theirs}.weight", f"{s}attn.{ours}.weight", _rope(cfg, theirs))
        p.copy(d + "post_attention_layernorm.weight", s + "ffn_norm.weight")
        if i < cfg.first_k_dense:
            _swiglu(p, s + "ffn.", d + "mlp.")
            continue
        p.copy(d + "mlp.gate.weight", s + "ffn.router.weight")
        p.put(
            d + "mlp.gate.e_score_correction_bias",
            (cfg.moe.n_routed_experts,),
            lambda s=s: p.reader.whole(s + "ffn.router.expert_bias"),
            torch.float32,  # K2.5 keeps the selection bias in float32
        )
        for e in range(cfg.moe.n_routed_experts):
            for ours, theirs, transpose in (
                ("w1", "gate_proj", False),
                ("w3", "up_proj", False),
                ("w2", "down_proj", True),
            ):
                p.expert(f"{d}mlp.experts.{e}.{theirs}", f"{s}ffn.experts.{ours}", e, transpose, int4)
        if cfg.moe.n_shared_experts > 0:
            _swiglu(p, s + "ffn.shared.", d + "mlp.shared_experts.")
    p.copy(lm + "norm.weight", "language_model.norm.weight")
    if not cfg.tie_embeddings:
        p.copy(head, "language_model.lm_head.weight")


def _swiglu(p: _Plan, s: str, d: str) -> None:
    rows = p.reader.shape(s + "w13.weight")[0] // 2
    p.copy(d + "gate_proj.weight", s + "w13.weight", lambda t: t[:rows])
    p.copy(d + "up_proj.weight", s + "w13.weight", lambda t: t[rows:])
    p.copy(d + "down_proj.weight", s + "w2.weight")


def _vision(p: _Plan, v: VisionConfig) -> None:
    hd = v.hidden_size // v.n_heads
    p.copy("vision_tower.patch_embed.pos_emb.weight", "vision_tower.pos_emb")
    p.copy(
        "vision_tower.patch_embed.proj.weight",
        "vision_tower.patch_embed.weight",
        lambda t: t.reshape(t.shape[0], 3, v.patch_size, v.patch_size),
    )
    p.copy("vision_tower.patch_embed.proj.bias", "vision_tower.patch_embed.bias")
    for i in range(v.n_layers):
        s, d = f"vision_tower.layers.{i}.", f"vision_tower.encoder.blocks.{i}."
        for suffix in ("weight", "bias"):
            for theirs, ours in VIT_BLOCK.items():
                p.copy(f"{d}{theirs}.{suffix}", f"{s}{ours}.{suffix}")

            def qkv(suffix: str = suffix, s: str = s) -> torch.Tensor:
                q, k, val = (p.reader.whole(f"{s}attn.{n}.{suffix}") for n in ("q_proj", "k_proj", "v_proj"))
                # the release keeps q and k rows as interleaved rotary pairs
                return torch.cat(
                    (interleave_rows(q, v.n_heads, hd, hd), interleave_rows(k, v.n_heads, hd, hd), val)
                )

            shape = (3 * v.hidden_size, v.hidden_size) if suffix == "weight" else (3 * v.hidden_size,)
            p.put(f"{d}wqkv.{suffix}", shape, qkv)
    for suffix in ("weight", "bias"):
        p.copy(f"vision_tower.encoder.final_layernorm.{suffix}", f"vision_tower.final_norm.{suffix}")
        for theirs, ours in PROJ.items():
            p.copy(f"mm_projector.{theirs}.{suffix}", f"projector.{ours}.{suffix}")


# ------------------------------------------------------------------------ export
def _check(run: RunConfig, ckpt: Path, quantize: str | None) -> None:
    cfg = run.model
    if cfg.vision is not None and cfg.vision.temporal_attention != "joint":
        raise ConfigError(
            f"{ckpt}: model.vision.temporal_attention={cfg.vision.temporal_attention} is a kimi_lab "
            "ablation; K2.5 attends jointly over a chunk's frames, so the export would change the model"
        )
    if cfg.vision is not None and cfg.attention.q_lora_rank is None:
        # transformers' kimi_k25 weight renaming takes the language model's self_attn.q_proj
        # for the vision attention's q_proj, so such a folder would not load back.
        raise ConfigError(
            f"{ckpt}: transformers cannot reload a kimi_k25 model whose language model has no "
            "q_lora_rank (a full-rank q_proj); K2 uses q_lora_rank=1536"
        )
    if quantize not in (None, "int4"):
        raise ConfigError(f"--quantize {quantize} is not supported (int4: K2.5's format for routed experts)")
    g = quant.INT4_GROUP
    if quantize == "int4" and (cfg.hidden_size % g or cfg.moe.expert_ffn_dim % g):
        raise ConfigError(
            f"--quantize int4 groups {g} inputs: hidden_size={cfg.hidden_size} and "
            f"expert_ffn_dim={cfg.moe.expert_ffn_dim} must be multiples of {g}"
        )


def export_hf(
    ckpt: str | Path,
    out_dir: str | Path,
    quantize: str | None = None,
    dtype: str = "float32",
    shard_bytes: int = 4 << 30,
    slab_bytes: int = 256 << 20,
) -> Path:
    """Write checkpoint ``ckpt`` (a file or a sharded folder) as an HF folder ``out_dir``."""
    from kimi_lab.hf.importer import _progress
    from kimi_lab.loading import read_config

    ckpt, out = Path(ckpt), Path(out_dir)
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype} is not one of {', '.join(DTYPES)}")
    run = read_config(ckpt)
    _check(run, ckpt, quantize)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} exists and is not empty; export-hf never overwrites (pick another folder)")
    cfg = run.model
    reader = CheckpointReader(ckpt, slab_bytes)
    p = _Plan(reader, DTYPES[dtype], slab_bytes)
    int4 = quant.int4_scheme() if quantize == "int4" else None
    if cfg.vision is None:
        _language_model(p, cfg, "model.", "lm_head.weight", int4)
    else:
        _language_model(p, cfg, "language_model.model.", "language_model.lm_head.weight", int4)
        _vision(p, cfg.vision)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    bar = _progress(sum(t.nbytes for t in p.out), f"export {ckpt.name}")
    try:
        write_shards(tmp, p.out, shard_bytes, on_tensor=lambda t: bar.update(t.nbytes))
        bar.close()
        (tmp / "config.json").write_text(json.dumps(hf_config(cfg, dtype, quantize), indent=2))
        if not write_tokenizer_files(run, ckpt, tmp):
            print(
                f"export-hf: no tokenizer found for {ckpt} (data.tokenizer={run.data.tokenizer}): "
                "the export has no tokenizer, tokenizer_config.json or generation_config.json",
                file=sys.stderr,
            )
        (tmp / "kimi_lab.json").write_text(
            json.dumps({"exported_from": str(ckpt), "model": cfg.name, "quantize": quantize}, indent=2)
        )
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(tmp, out)
    except BaseException:
        bar.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
