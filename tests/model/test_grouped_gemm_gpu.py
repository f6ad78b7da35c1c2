"""The torch experts backend on CUDA: bf16 through ``torch._grouped_mm`` (no MegaBlocks), equal to
the per-token reference."""

from __future__ import annotations

import pytest
import torch

from kimi_lab.model.moe.expert_matmuls import use_grouped
from kimi_lab.model.moe.experts import TorchExperts, reference_experts


@pytest.mark.gpu
def test_torch_backend_runs_grouped_gemm_on_cuda_in_bf16() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if not hasattr(torch, "_grouped_mm"):
        pytest.skip(f"torch {torch.__version__} has no torch._grouped_mm (2.8 or newer)")
    torch.manual_seed(0)
    E, D, F, K, T = 8, 256, 128, 2, 300
    experts = TorchExperts(E, D, F).cuda()
    x = torch.randn(T, D, device="cuda", requires_grad=True)
    idx = torch.stack([torch.randperm(E, device="cuda")[:K] for _ in range(T)])
    idx[:50] = torch.tensor([0, 1], device="cuda")  # uneven groups, and expert 7 may get none
    weights = torch.rand(T, K, device="cuda")
    assert use_grouped(x.to(torch.bfloat16), D, F)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = experts(x, idx, weights)
    y.float().square().sum().backward()
    ref_x = x.detach().clone().requires_grad_()
    ref = reference_experts(experts, ref_x, idx, weights)
    torch.testing.assert_close(y.float(), ref, rtol=3e-2, atol=3e-2)
    ref.square().sum().backward()
    torch.testing.assert_close(x.grad, ref_x.grad, rtol=5e-2, atol=5e-2)
