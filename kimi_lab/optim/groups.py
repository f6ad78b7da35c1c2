"""Optimizer parameter groups: per module, per kind of tensor.

K2 applies decoupled weight decay to weight matrices only: norm gains, biases and
the router's selection bias (a buffer, not a parameter) are never decayed.
K2.5 trains its parts in stages (the ViT alone, then the projector, then
everything), so every top-level module (``language_model``, ``vision_tower``,
``projector``) gets its own groups and its own learning-rate multiplier; a
multiplier of 0 freezes the module (no gradients, not in the optimizer).

A module that fuses several matrices into one parameter for speed (``w13``)
says so with ``fused_row_parts``; each group carries, per parameter, the row
sizes of its parts, so Muon orthogonalises them as the separate matrices they
are in the reference models.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from torch import nn

EMBEDDING_MODULES = ("embed", "lm_head", "pos_emb")  # tables, not transforms: AdamW under Muon


@runtime_checkable
class FusedRows(Protocol):
    """A module whose parameters (local names) stack matrices along their rows (dim -2)."""

    fused_row_parts: dict[str, tuple[int, ...]]


def fused_row_parts(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Full parameter name -> the row sizes of the matrices it fuses, for every fusing module."""
    out = {}
    for prefix, module in model.named_modules():
        if isinstance(module, FusedRows):
            for local, parts in module.fused_row_parts.items():
                out[f"{prefix}.{local}" if prefix else local] = parts
    return out


@dataclass
class ParamGroup:
    name: str
    weight_decay: float
    lr_scale: float = 1.0
    params: list[nn.Parameter] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    fused_row_parts: list[tuple[int, ...] | None] = field(default_factory=list)  # per parameter

    @property
    def numel(self) -> int:
        return sum(p.numel() for p in self.params)


def _kind(name: str, p: nn.Parameter) -> str:
    if p.ndim < 2:
        return "norms+biases"
    if any(part in EMBEDDING_MODULES for part in name.split(".")):
        return "embeddings+head"
    return "matrices"


def build_param_groups(
    model: nn.Module, weight_decay: float, lr_scale: dict[str, float] | None = None
) -> list[ParamGroup]:
    lr_scale = lr_scale or {}
    fused = fused_row_parts(model)
    groups: dict[str, ParamGroup] = {}
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        module = name.split(".", 1)[0]
        scale = lr_scale.get(module, 1.0)
        if scale == 0:
            p.requires_grad_(False)
        if not p.requires_grad:
            continue
        kind = _kind(name, p)
        key = f"{module}/{kind}"
        if key not in groups:
            groups[key] = ParamGroup(key, 0.0 if kind == "norms+biases" else weight_decay, scale)
        groups[key].params.append(p)
        groups[key].names.append(name)
        groups[key].fused_row_parts.append(fused.get(name))
    return list(groups.values())
