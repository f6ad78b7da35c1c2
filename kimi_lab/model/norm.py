"""RMSNorm, computed in fp32 whatever the input dtype (as DeepSeek-V3 and K2 do)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # torch's fused kernel: the same fp32 arithmetic in one call (decode steps run dozens of norms)
        w = self.weight
        if x.dtype == w.dtype == torch.float32:
            return F.rms_norm(x, w.shape, w, self.eps)
        return F.rms_norm(x.float(), w.shape, w.float(), self.eps).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"
