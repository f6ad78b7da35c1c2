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
from pathlib import Path

import torch

from kimi_lab.config.schema import RunConfig
from kimi_lab.errors import ConfigError
from kimi_lab.hf import quant
from kimi_lab.hf.adapter import released_layout
from kimi_lab.hf.config import export_config
from kimi_lab.hf.export_tensors import CheckpointReader, export_tensors
from kimi_lab.hf.shards import write_shards
from kimi_lab.hf.tokenizer_files import write_tokenizer_files

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


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
    from kimi_lab.decode.loading import read_config
    from kimi_lab.hf.progress import byte_progress

    ckpt, out = Path(ckpt), Path(out_dir)
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype} is not one of {', '.join(DTYPES)}")
    run = read_config(ckpt)
    _check(run, ckpt, quantize)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} exists and is not empty; export-hf never overwrites (pick another folder)")
    cfg = run.model
    reader = CheckpointReader.open(ckpt, slab_bytes)
    int4 = quant.int4_scheme() if quantize == "int4" else None
    tensors = export_tensors(cfg, released_layout(cfg), reader, DTYPES[dtype], int4, slab_bytes)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    bar = byte_progress(sum(t.nbytes for t in tensors), f"export {ckpt.name}")
    try:
        write_shards(tmp, tensors, shard_bytes, on_tensor=lambda t: bar.update(t.nbytes))
        bar.close()
        (tmp / "config.json").write_text(json.dumps(export_config(cfg, dtype, quantize), indent=2))
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
