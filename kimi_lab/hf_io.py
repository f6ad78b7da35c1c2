"""``kimi-lab export-hf`` and ``kimi-lab import-hf``: checkpoints to and from transformers' format.

Export writes a directory that ``from_pretrained`` loads (config.json + safetensors):
``kimi_k25`` for a model with a vision tower, ``deepseek_v3`` for a text-only one.
Import reads such a directory (any checkpoint of that format: a small random one
made with transformers, or the real architecture on a cluster) and writes a
kimi_lab checkpoint that ``phase.init_from`` starts training from; the run then
takes its model config from the checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import torch
from omegaconf import OmegaConf

from kimi_lab.config import validate_model
from kimi_lab.config.schema import ModelConfig, MoEBackend, RunConfig
from kimi_lab.errors import ConfigError
from kimi_lab.loading import PREFIX, read_checkpoint


def export_hf(ckpt_path: str | Path, out_dir: str | Path) -> Path:
    from kimi_lab.model.hf import to_transformers
    from kimi_lab.model.multimodal import KimiK25

    run, state, _ = read_checkpoint(ckpt_path)
    if run.model.vision is not None and run.model.vision.temporal_attention != "joint":
        raise ConfigError(
            f"{ckpt_path}: model.vision.temporal_attention={run.model.vision.temporal_attention} is a kimi_lab "
            "ablation; transformers' kimi_k25 attends jointly over a chunk's frames, so the export would change the model"
        )
    if run.model.vision is not None and run.model.attention.q_lora_rank is None:
        # transformers' kimi_k25 weight renaming takes the language model's self_attn.q_proj
        # for the vision attention's q_proj, so such a folder would not load back.
        raise ConfigError(
            f"{ckpt_path}: transformers cannot reload a kimi_k25 model whose language model has no "
            "q_lora_rank (a full-rank q_proj); K2 uses q_lora_rank=1536"
        )
    model = KimiK25(replace(run.model, moe=replace(run.model.moe, backend=MoEBackend.torch)))
    model.load_state_dict(state, strict=True)
    hf = to_transformers(model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(out, safe_serialization=True)
    tokenizer = Path(run.data.tokenizer)
    if tokenizer.is_file():  # the byte-level BPE the model was trained with
        shutil.copy(tokenizer, out / "tokenizer.json")
    (out / "kimi_lab.json").write_text(
        json.dumps({"exported_from": str(ckpt_path), "model": run.model.name}, indent=2)
    )
    return out


def import_hf(hf_dir: str | Path, out_ckpt: str | Path) -> tuple[Path, ModelConfig]:
    try:
        from transformers import AutoConfig, DeepseekV3ForCausalLM, Kimi_K25ForConditionalGeneration
    except ImportError as exn:
        raise ConfigError(f"import-hf needs transformers>=5: pip install -e '.[hf]' ({exn})") from None
    from kimi_lab.model.hf import from_transformers

    hf_dir = Path(hf_dir)
    if not (hf_dir / "config.json").is_file():
        raise ConfigError(f"{hf_dir}: no config.json (not a transformers checkpoint folder)")
    config = AutoConfig.from_pretrained(hf_dir)
    classes = {"kimi_k25": Kimi_K25ForConditionalGeneration, "deepseek_v3": DeepseekV3ForCausalLM}
    if config.model_type not in classes:
        raise ConfigError(
            f"{hf_dir}: model_type={config.model_type!r} is not supported (kimi_k25, deepseek_v3)"
        )
    hf = classes[config.model_type].from_pretrained(hf_dir, dtype=torch.float32)
    model = from_transformers(hf, name=f"imported-{hf_dir.name}")
    validate_model(model.cfg)
    run = replace(RunConfig(), model=model.cfg)
    out = Path(out_ckpt)
    out.parent.mkdir(parents=True, exist_ok=True)
    if (hf_dir / "tokenizer.json").is_file():  # the tokenizer export-hf copied: it goes beside the checkpoint
        tokenizer = out.parent / "tokenizer.json"
        shutil.copy(hf_dir / "tokenizer.json", tokenizer)
        run = replace(run, data=replace(run.data, tokenizer=str(tokenizer.resolve())))
    checkpoint = {
        "state_dict": {PREFIX + k: v for k, v in model.state_dict().items()},
        "hyper_parameters": {"config": OmegaConf.to_container(OmegaConf.structured(run), enum_to_str=True)},
        "kimi_lab": {"imported_from": str(hf_dir), "model_type": config.model_type},
    }
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    torch.save(checkpoint, tmp)
    os.replace(tmp, out)
    return out, model.cfg
