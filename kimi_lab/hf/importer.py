"""``kimi-lab import-hf``: a Hugging Face K2 / K2.5 folder -> a sharded kimi_lab checkpoint, streamed.

Reads config.json and the index, plans every kimi_lab tensor as chunks of HF
tensors (``import_chunks``, over the adapter's map), and writes them with
torch.distributed.checkpoint one chunk at a time (``dcp_stream``), dequantizing
FP8 and INT4 weights on the way. Peak
memory is one output file's worth of chunks (``file_bytes``) plus the chunk being
made, whatever the model's size. The folder is written under a temporary name and
renamed when complete: a killed import leaves no checkpoint that looks whole.
The HF folder's tokenizer (``tiktoken.model`` + ``tokenizer_config.json``, or a
``tokenizer.json``) and its ``generation_config.json`` are copied in, where
``loading.load_tokenizer`` finds them; what the two configs say (eos, pad, stop ids, chat
template) is checked against kimi_lab's reading of the tokenizer and kept in ``meta.pt``.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from kimi_lab.config import validate_model
from kimi_lab.config.schema import ModelConfig, MoEBackend, RunConfig
from kimi_lab.decode.loading import PREFIX
from kimi_lab.errors import ConfigError
from kimi_lab.hf.config import HFConfig, read_hf_config, with_video_token
from kimi_lab.hf.progress import byte_progress
from kimi_lab.hf.source import Source
from kimi_lab.hf.tokenizer_files import TOKENIZER_FILES, read_tokenizer_files

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
STATE = "state_dict." + PREFIX  # a sharded checkpoint's names: state_dict.model.<KimiK25 name>


def model_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor kimi_lab's model saves, with its shape (built on the meta device: no memory)."""
    from kimi_lab.model.multimodal import KimiK25

    cfg = replace(cfg, moe=replace(cfg.moe, backend=MoEBackend.torch))
    with torch.device("meta"):
        model = KimiK25(cfg, device_type="meta")
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def folder_tokenizer(hf_dir: Path) -> Path | None:
    """The tokenizer file an HF folder ships (tiktoken first: that is what K2 / K2.5 use)."""
    return next((hf_dir / n for n in ("tiktoken.model", "tokenizer.json") if (hf_dir / n).is_file()), None)


def resolve_config(hf_dir: Path) -> HFConfig:
    """The folder's config, with the vision tower's video placeholder taken from its tokenizer."""
    hf = read_hf_config(hf_dir)
    tok_path = folder_tokenizer(hf_dir)
    if hf.model.vision is not None and tok_path is not None and tok_path.name == "tiktoken.model":
        from kimi_lab.data.tokenizer import open_tokenizer

        hf = with_video_token(hf, open_tokenizer(tok_path).token_id("<|video_pad|>"))
    validate_model(hf.model)
    return hf


def import_hf(
    hf_dir: str | Path,
    out: str | Path,
    dtype: str = "float32",
    file_bytes: int = 1 << 30,
    slab_bytes: int = 256 << 20,
) -> tuple[Path, ModelConfig]:
    """Convert ``hf_dir`` into the sharded checkpoint folder ``out`` (which must not exist)."""
    from kimi_lab.hf.dcp_stream import write_chunks
    from kimi_lab.hf.import_chunks import import_chunks

    hf_dir, out = Path(hf_dir), Path(out)
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype} is not one of {', '.join(DTYPES)}")
    if out.exists():
        raise ConfigError(
            f"{out} exists; import-hf never overwrites a checkpoint (remove it or pick another path)"
        )
    hf = resolve_config(hf_dir)
    tokenizer = read_tokenizer_files(hf_dir, folder_tokenizer(hf_dir))
    src = Source(hf_dir, hf.quantization)
    chunks, unused = import_chunks(hf, src, model_shapes(hf.model), DTYPES[dtype], STATE, slab_bytes)
    if unused:  # counted and said, never silently dropped
        print(
            f"import-hf: {len(unused)} tensors of {hf_dir} are not imported (e.g. {unused[0]})",
            file=sys.stderr,
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    bar = byte_progress(sum(c.nbytes for c in chunks), f"import {hf_dir.name}")
    try:
        write_chunks(tmp, chunks, file_bytes, on_chunk=lambda c: bar.update(c.nbytes))
        bar.close()
        _write_meta(tmp, out, hf, hf_dir, dtype, tokenizer)
        for name in TOKENIZER_FILES:
            if (hf_dir / name).is_file():
                shutil.copy(hf_dir / name, tmp / name)
        os.replace(tmp, out)
    except BaseException:
        bar.close()
        shutil.rmtree(tmp, ignore_errors=True)  # never leave a half checkpoint behind
        raise
    return out, hf.model


def _write_meta(
    folder: Path, final: Path, hf: HFConfig, hf_dir: Path, dtype: str, tokenizer: dict[str, Any]
) -> None:
    """``meta.pt``: what Lightning keeps beside a sharded checkpoint (the run config), plus provenance."""
    run = replace(RunConfig(), model=hf.model)
    tok = folder_tokenizer(hf_dir)
    if tok is not None:  # a run started from this checkpoint finds its tokenizer here
        run = replace(run, data=replace(run.data, tokenizer=str(final.resolve() / tok.name)))
    meta = {
        "hyper_parameters": {"config": OmegaConf.to_container(OmegaConf.structured(run), enum_to_str=True)},
        "kimi_lab": {
            "imported_from": str(hf_dir.resolve()),
            "model_type": hf.model_type,
            "quantization": (hf.quantization or {}).get("quant_method"),
            "dtype": dtype,
            "tokenizer": tokenizer,
        },
    }
    torch.save(meta, folder / "meta.pt")
