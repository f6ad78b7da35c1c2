"""QK-Clip (K2): rein in attention logits after the optimizer step, head by head.

During the step's forward passes every attention module records, per head, the
largest pre-softmax logit it produced (over the whole batch, all micro-batches;
maxima are then combined across data-parallel ranks). After the optimizer step,
each head whose maximum exceeded tau has its query/key weights rescaled with
gamma = tau / max, which caps that logit at tau; the step's own forward and
backward are unchanged. The module does the rescaling (MLA and standard
attention split their weights differently); here we collect, decide and report.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class LogitReport:
    tower: str  # "language_model" or "vision_tower"
    max_logit_LH: torch.Tensor  # (layers, heads), measured before clipping
    clipped_LH: torch.Tensor  # (layers, heads) bool


def attention_modules(model: nn.Module) -> dict[str, list[nn.Module]]:
    """Measuring attention modules of each tower, in layer order."""
    towers: dict[str, list[nn.Module]] = {}
    for name, module in model.named_modules():
        if hasattr(module, "measure_max_logit") and hasattr(module, "clip_heads"):
            tower = "vision_tower" if "vision_tower" in name.split(".") else "language_model"
            towers.setdefault(tower, []).append(module)
    return towers


def set_measuring(model: nn.Module, on: bool) -> None:
    for modules in attention_modules(model).values():
        for m in modules:
            m.measure_max_logit = on


@torch.no_grad()
def qk_clip_step(model: nn.Module, tau: float | None) -> list[LogitReport]:
    """Read (and reset) the step's per-head maxima; clip heads above ``tau`` (None: only measure)."""
    reports = []
    for tower, modules in attention_modules(model).items():
        maxima = torch.stack([m.max_logit for m in modules])
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(maxima, op=dist.ReduceOp.MAX)
        measured = torch.isfinite(maxima)
        clipped = measured & (maxima > tau) if tau is not None else torch.zeros_like(measured)
        if clipped.any():
            gamma = torch.where(clipped, tau / maxima, torch.ones_like(maxima))
            for module, gamma_H, hit in zip(modules, gamma, clipped):
                if hit.any():
                    module.clip_heads(gamma_H)
        for m in modules:
            m.max_logit.fill_(float("-inf"))
        if measured.any():
            reports.append(LogitReport(tower, maxima.cpu(), clipped.cpu()))
    return reports
