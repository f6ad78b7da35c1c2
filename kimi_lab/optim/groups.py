"""Optimizer parameter groups: per module, per kind of tensor.

K2 applies decoupled weight decay to weight matrices only: norm gains, biases and
the router's selection bias (a buffer, not a parameter) are never decayed.
K2.5 trains its parts in stages (the ViT alone, then the projector, then
everything), so every top-level module (``language_model``, ``vision_tower``,
``projector``) gets its own groups and its own learning-rate multiplier; a
multiplier of 0 freezes the module (no gradients, not in the optimizer).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

EMBEDDING_MODULES = ("embed", "lm_head", "pos_emb")  # tables, not transforms: AdamW under Muon


@dataclass
class ParamGroup:
    name: str
    weight_decay: float
    lr_scale: float = 1.0
    params: list[nn.Parameter] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

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
    return list(groups.values())
