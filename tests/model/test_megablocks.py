"""Backend selection, and MegaBlocks parity on a GPU."""

from __future__ import annotations

import pytest
import torch

from kimi_lab.config.schema import MoEBackend, MoEConfig
from kimi_lab.errors import ConfigError
from kimi_lab.model.moe.layer import MoELayer, resolve_backend


def test_auto_picks_torch_for_cpu_runs() -> None:
    backend, why = resolve_backend(MoEBackend.auto, "cpu")
    assert backend == "torch" and "cpu" in why


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on machines without CUDA")
def test_requesting_megablocks_without_cuda_is_a_one_line_error() -> None:
    with pytest.raises(ConfigError) as err:
        resolve_backend(MoEBackend.megablocks, "cpu")
    message = str(err.value)
    assert "model.moe.backend=megablocks" in message and "CUDA" in message and "\n" not in message


@pytest.mark.gpu
def test_megablocks_matches_torch_backend() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    pytest.importorskip("megablocks")
    torch.manual_seed(0)
    cfg = MoEConfig(n_routed_experts=8, top_k=2, expert_ffn_dim=128, n_shared_experts=1)
    ref = MoELayer(256, cfg, backend="torch").cuda()
    mb = MoELayer(256, cfg, backend="megablocks").cuda()
    missing, unexpected = mb.load_state_dict(ref.state_dict(), strict=False)
    assert not unexpected and not missing
    x = torch.randn(2, 64, 256, device="cuda", requires_grad=True)
    x_mb = x.detach().clone().requires_grad_()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y_ref, _ = ref(x)
        y_mb, _ = mb(x_mb)
    torch.testing.assert_close(y_mb.float(), y_ref.float(), rtol=2e-2, atol=2e-2)
    y_ref.float().sum().backward()
    y_mb.float().sum().backward()
    torch.testing.assert_close(x_mb.grad, x.grad, rtol=5e-2, atol=5e-2)
    # the canonical state dict round-trips between backends
    assert set(mb.state_dict()) == set(ref.state_dict())
