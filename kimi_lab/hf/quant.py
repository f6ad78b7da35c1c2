"""The two quantized formats the released checkpoints ship in, to and from float.

- FP8 block-scaled (K2, as DeepSeek-V3): ``weight`` in float8 e4m3 and
  ``weight_scale_inv`` in float32, one factor per (128 x 128) block; the real
  weight is ``weight * weight_scale_inv`` block by block.
- INT4 pack-quantized ``compressed-tensors`` (K2.5's routed experts): symmetric
  groups of 32 along the input dimension, eight 4-bit values per int32
  (``weight_packed``), one bf16 ``weight_scale`` per group, the original
  ``weight_shape``. Packing, quantization and dequantization are the
  ``compressed-tensors`` library's own (the format's reference implementation).

Dequantized weights are float32: the product of an int4 (or e4m3) value and its
scale is exact there, so import(export(x)) reproduces the quantized weights bit for bit.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from kimi_lab.errors import ConfigError

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
FP8_MAX = 448.0  # the largest finite float8 e4m3fn
DEFAULT_BLOCK = (128, 128)
INT4_GROUP = 32  # K2.5's group size


# ----------------------------------------------------------------------------- FP8
def fp8_block(quantization: dict[str, Any] | None) -> tuple[int, int]:
    """The block shape of an FP8 checkpoint's quantization_config (DeepSeek's default 128 x 128)."""
    block = (quantization or {}).get("weight_block_size") or DEFAULT_BLOCK
    if len(block) != 2 or min(block) < 1:
        raise ConfigError(f"quantization_config.weight_block_size={block!r} must be two positive sizes")
    return int(block[0]), int(block[1])


def fp8_dequantize(
    w: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int] = DEFAULT_BLOCK, where: str = ""
) -> torch.Tensor:
    """float8 ``w`` (O, I) times its per-block factors (ceil(O/bo), ceil(I/bi)), as float32."""
    bo, bi = block
    rows, cols = w.shape
    want = (math.ceil(rows / bo), math.ceil(cols / bi))
    if tuple(scale_inv.shape) != want:
        raise ConfigError(
            f"{where}: weight_scale_inv is {tuple(scale_inv.shape)} but a {rows}x{cols} weight in "
            f"{bo}x{bi} blocks needs {want}"
        )
    scale = scale_inv.float().repeat_interleave(bo, 0)[:rows].repeat_interleave(bi, 1)[:, :cols]
    return w.float() * scale


def fp8_quantize(
    w: torch.Tensor, block: tuple[int, int] = DEFAULT_BLOCK
) -> tuple[torch.Tensor, torch.Tensor]:
    """(float8 e4m3 weight, float32 weight_scale_inv): each block's largest value maps to 448."""
    bo, bi = block
    rows, cols = w.shape
    pr, pc = math.ceil(rows / bo) * bo, math.ceil(cols / bi) * bi
    padded = torch.zeros(pr, pc, dtype=torch.float32)
    padded[:rows, :cols] = w.float()
    blocks = padded.view(pr // bo, bo, pc // bi, bi)
    amax = blocks.abs().amax(dim=(1, 3)).clamp_min(1e-12)
    scale = amax / FP8_MAX
    q = (blocks / scale[:, None, :, None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q.view(pr, pc)[:rows, :cols].contiguous(), scale


# ---------------------------------------------------------------------------- INT4
def int4_scheme(quantization: dict[str, Any] | None = None) -> Any:
    """The compressed-tensors scheme of a pack-quantized config (K2.5's when none is given)."""
    try:
        from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    except ImportError as exn:
        raise ConfigError(
            f"INT4 checkpoints need compressed-tensors: pip install -e '.[hf]' ({exn})"
        ) from None
    quantization = quantization or int4_quantization_config()
    fmt = quantization.get("format")
    if fmt != "pack-quantized":
        raise ConfigError(f"compressed-tensors format={fmt!r} is not supported (pack-quantized, as K2.5)")
    groups = [g for g in (quantization.get("config_groups") or {}).values() if g.get("weights")]
    if len(groups) != 1:
        raise ConfigError(f"expected one compressed-tensors config group with weights, found {len(groups)}")
    weights = {k: v for k, v in groups[0]["weights"].items() if v is not None}
    if weights.get("type", "int") != "int" or not weights.get("symmetric", True):
        raise ConfigError("only symmetric integer pack-quantized weights are supported (as K2.5 ships)")
    return QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(**weights))


def _compressor() -> Any:
    from compressed_tensors.compressors import PackedQuantizationCompressor

    return PackedQuantizationCompressor


def int4_dequantize(
    packed: torch.Tensor,
    scale: torch.Tensor,
    shape: torch.Tensor | None,
    scheme: Any = None,
    where: str = "",
) -> torch.Tensor:
    """``weight_packed`` (int32) + ``weight_scale`` (+ ``weight_shape``) -> the float32 weight."""
    scheme = scheme or int4_scheme()
    if packed.dtype != torch.int32:
        raise ConfigError(f"{where}: weight_packed is {packed.dtype}, expected int32")
    if shape is None:  # a group-quantized weight's input width is pinned by its scales
        shape = torch.tensor([packed.shape[0], scale.shape[-1] * scheme.weights.group_size])
    try:
        out = _compressor().decompress(
            {"weight_packed": packed, "weight_scale": scale.float(), "weight_shape": shape}, scheme
        )
    except Exception as exn:
        raise ConfigError(f"{where}: cannot unpack the INT4 weight ({type(exn).__name__}: {exn})") from None
    return out["weight"].float()


def int4_quantize(w: torch.Tensor, scheme: Any = None) -> dict[str, torch.Tensor]:
    """A float weight (O, I) as K2.5 stores an expert: weight_packed, weight_scale (bf16), weight_shape."""
    from compressed_tensors.quantization.utils import calculate_qparams

    scheme = scheme or int4_scheme()
    args = scheme.weights
    rows, cols = w.shape
    g = args.group_size
    if cols % g:
        raise ConfigError(f"an INT4 weight's input width {cols} must be a multiple of the group size {g}")
    groups = w.float().view(rows, cols // g, g)
    scale, _ = calculate_qparams(groups.amin(-1), groups.amax(-1), args)
    # the stored scale is bf16: quantize against the rounded value so dequantization is what was meant
    scale = scale.clamp_min(torch.finfo(torch.bfloat16).tiny).to(torch.bfloat16)
    out = _compressor().compress({"weight": w.float(), "weight_scale": scale.float()}, scheme)
    return {
        "weight_packed": out["weight_packed"],
        "weight_scale": scale,
        "weight_shape": torch.tensor([rows, cols], dtype=torch.int32),
    }


def int4_quantization_config() -> dict[str, Any]:
    """K2.5's quantization_config: INT4 routed experts, everything else as is."""
    return {
        "config_groups": {
            "group_0": {
                "input_activations": None,
                "output_activations": None,
                "targets": ["Linear"],
                "weights": {
                    "actorder": None,
                    "block_structure": None,
                    "dynamic": False,
                    "group_size": INT4_GROUP,
                    "num_bits": 4,
                    "observer": "minmax",
                    "observer_kwargs": {},
                    "strategy": "group",
                    "symmetric": True,
                    "type": "int",
                },
            }
        },
        "format": "pack-quantized",
        "ignore": [
            "lm_head",
            "re:.*self_attn.*",
            "re:.*shared_experts.*",
            r"re:.*mlp\.(gate|up|gate_up|down)_proj.*",
            "re:.*vision_tower.*",
            "re:.*mm_projector.*",
        ],
        "kv_cache_scheme": None,
        "quant_method": "compressed-tensors",
        "quantization_status": "compressed",
    }
