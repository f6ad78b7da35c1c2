"""kimi_lab's KimiK25 to and from transformers' ``deepseek_v3`` / ``kimi_k25`` models, in memory.

The K2 language model *is* a DeepSeek-V3 model (K2.5's ``text_config``); with a vision
tower the whole is a ``Kimi_K25ForConditionalGeneration``. Both directions run the
adapter's two plans (``export_tensors``, ``import_chunks``) on state dicts instead of
files, so the parity tests against transformers check the very map the released
checkpoints are converted with. transformers keeps the rotate-half RoPE layout
(``rope_interleave=False``) and its fused (E, 2F, D) experts; a transformers model with
interleaved rotary rows (DeepSeek's layout) is read as such.
"""

from __future__ import annotations

from typing import Any

import torch

from kimi_lab.config.schema import ModelConfig
from kimi_lab.errors import ConfigError
from kimi_lab.hf.adapter import HFLayout, transformers_layout
from kimi_lab.hf.config import HFConfig, deepseek_v3_config_kwargs, kimi_k25_config_kwargs, parse_config
from kimi_lab.hf.export_tensors import CheckpointReader, export_tensors
from kimi_lab.hf.import_chunks import import_chunks
from kimi_lab.hf.source import Source

Tensors = dict[str, torch.Tensor]


def to_hf_state_dict(state: Tensors, cfg: ModelConfig, layout: HFLayout | None = None) -> Tensors:
    """KimiK25 state dict -> HF names: ``Kimi_K25ForConditionalGeneration``'s (or ``DeepseekV3ForCausalLM``'s)
    unless another ``layout`` is asked for."""
    layout = layout or transformers_layout(cfg)
    tensors = export_tensors(cfg, layout, CheckpointReader(state), torch.float32)
    return {t.name: t.parts[0]() if len(t.parts) == 1 else torch.cat([p() for p in t.parts]) for t in tensors}


def from_hf_state_dict(hf: Tensors, config: HFConfig, shapes: dict[str, tuple[int, ...]]) -> Tensors:
    """An HF state dict (any layout the import reads) -> KimiK25 tensors of ``shapes`` (a model's)."""
    chunks, _ = import_chunks(config, Source("<state dict>", tensors=hf), shapes, torch.float32, "")
    out: Tensors = {}
    for c in chunks:
        if c.fqn not in out:
            out[c.fqn] = torch.empty(c.size, dtype=c.dtype)
        out[c.fqn][c.offset : c.offset + c.rows] = c.make()
    return out


def build_transformers(cfg: ModelConfig) -> torch.nn.Module:
    """An empty transformers model of the same architecture (fp32, eager attention)."""
    try:
        from transformers import (
            DeepseekV3Config,
            DeepseekV3ForCausalLM,
            Kimi_K25Config,
            Kimi_K25ForConditionalGeneration,
        )
    except ImportError as exn:
        raise ConfigError(
            f"Hugging Face conversion needs transformers>=5: pip install -e '.[hf]' ({exn})"
        ) from None
    if cfg.vision is None:
        hf_cfg = DeepseekV3Config(**deepseek_v3_config_kwargs(cfg))
        model_cls: Any = DeepseekV3ForCausalLM
    else:
        hf_cfg = Kimi_K25Config(**kimi_k25_config_kwargs(cfg))
        model_cls = Kimi_K25ForConditionalGeneration
    hf_cfg._attn_implementation = "eager"
    return model_cls(hf_cfg)


def to_transformers(model: torch.nn.Module) -> torch.nn.Module:
    """An equivalent transformers model with this KimiK25's weights (fp32, eval)."""
    cfg: ModelConfig = model.cfg  # type: ignore[assignment]
    hf = build_transformers(cfg)
    state = {k: v.detach().float() for k, v in model.state_dict().items()}
    missing, unexpected = hf.load_state_dict(to_hf_state_dict(state, cfg), strict=False)
    missing = [k for k in missing if not (cfg.tie_embeddings and k == "lm_head.weight")]
    if unexpected or missing:
        raise RuntimeError(f"conversion mismatch: missing={missing} unexpected={unexpected}")
    return hf.eval()


def from_transformers(hf: torch.nn.Module, name: str = "imported") -> torch.nn.Module:
    """A KimiK25 with the weights of a transformers ``kimi_k25`` or ``deepseek_v3`` model."""
    from kimi_lab.model.multimodal import KimiK25

    config = parse_config(hf.config.to_dict(), "transformers config", name)  # type: ignore[operator]
    model = KimiK25(config.model)
    state = {k: v.detach().float() for k, v in hf.state_dict().items()}
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    model.load_state_dict(from_hf_state_dict(state, config, shapes), strict=True)
    return model.eval()
