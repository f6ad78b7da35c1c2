"""Dense SwiGLU feed-forward (the first_k_dense layers and the shared experts)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SwiGLU(nn.Module):
    """y = W2 (silu(W1 x) * W3 x), with W1 and W3 fused into one matmul (``w13``)."""

    def __init__(self, dim: int, ffn_dim: int) -> None:
        super().__init__()
        self.ffn_dim = ffn_dim
        self.w13 = nn.Linear(dim, 2 * ffn_dim, bias=False)  # rows [0, F): gate W1, [F, 2F): up W3
        self.w2 = nn.Linear(ffn_dim, dim, bias=False)
        # Two matrices in one parameter: Muon orthogonalises each (optim.groups.FusedRows).
        self.fused_row_parts = {"w13.weight": (ffn_dim, ffn_dim)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w13(x).split(self.ffn_dim, dim=-1)
        return self.w2(F.silu(gate) * up)
