"""Optimizer parameter groups: weight decay on matrices only, never on norms or biases.

K2 applies decoupled weight decay to its weight matrices; norms' gains, biases and
the router's selection bias (a buffer, not a parameter) are never decayed. Each
group is named so the start-of-run table and later per-module rules can refer to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn


@dataclass
class ParamGroup:
    name: str
    weight_decay: float
    params: list[nn.Parameter] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    @property
    def numel(self) -> int:
        return sum(p.numel() for p in self.params)


def build_param_groups(model: nn.Module, weight_decay: float) -> list[ParamGroup]:
    decay = ParamGroup("matrices", weight_decay)
    embed = ParamGroup("embeddings+head", weight_decay)
    no_decay = ParamGroup("norms+biases", 0.0)
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        group = no_decay if p.ndim < 2 else embed if name.startswith(("embed.", "lm_head.")) else decay
        group.params.append(p)
        group.names.append(name)
    return [g for g in (decay, embed, no_decay) if g.params]
