"""The decode path: MLA's latent cache with absorbed up-projections, and the few-token routed experts."""

from __future__ import annotations

import pytest
import torch

from kimi_lab.config import compose, to_run_config
from kimi_lab.model.moe.decode import STRATEGIES, decode_experts, decode_strategy
from kimi_lab.model.moe.experts import TorchExperts, reference_experts
from kimi_lab.model.multimodal import KimiK25


def _model(*overrides: str) -> KimiK25:
    torch.manual_seed(0)
    model = KimiK25(to_run_config(compose(["model=tiny", *overrides])).model).eval()
    with torch.no_grad():  # non-trivial norms, so the latent's norm is exercised
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("q_lora", [None, 24])
def test_cached_logits_equal_the_uncached_forward(q_lora: int | None) -> None:
    """Left-padded rows: prompt in one forward, then one-token steps and a three-token chunk (fp32)."""
    lm = _model(f"model.attention.q_lora_rank={'null' if q_lora is None else q_lora}").language_model
    lengths, prompt, new = [9, 5, 2], 9, 6
    seqs = [torch.randint(40, 500, (n + new,)) for n in lengths]
    B = len(seqs)
    ids = torch.zeros(B, prompt + new, dtype=torch.long)
    mask = torch.zeros(B, prompt + new, dtype=torch.long)
    for i, (s, n) in enumerate(zip(seqs, lengths, strict=True)):
        ids[i, prompt - n :] = s
        mask[i, prompt - n :] = 1
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    cache = lm.new_cache(prompt + new)
    with torch.no_grad():
        out = [
            lm(ids[:, :prompt], attention_mask=mask[:, :prompt], positions=positions[:, :prompt], cache=cache)
        ]
        for t in range(prompt, prompt + 3):  # one token at a time
            out.append(lm(ids[:, t : t + 1], positions=positions[:, t : t + 1], cache=cache))
        out.append(lm(ids[:, prompt + 3 :], positions=positions[:, prompt + 3 :], cache=cache))  # a chunk
        cached = torch.cat([o.logits for o in out], dim=1)
        for i, (s, n) in enumerate(zip(seqs, lengths, strict=True)):
            alone = lm(s[None]).logits[0]  # the row by itself: no padding, no cache
            assert (cached[i, prompt - n :] - alone).abs().max() < 1e-5
    assert cache.length == prompt + new


def test_latent_cache_holds_kv_rank_plus_rope_dim_per_token() -> None:
    model = _model()
    a = model.cfg.attention
    lm = model.language_model
    cache = lm.new_cache(12)
    with torch.no_grad():
        lm(torch.randint(40, 500, (3, 7)), cache=cache)
    kv = cache.kv_LBSk
    assert kv is not None and kv.shape == (model.cfg.n_layers, 3, 12, a.kv_lora_rank + a.qk_rope_head_dim)
    assert cache.values_per_token == a.kv_lora_rank + a.qk_rope_head_dim == 40
    assert cache.bytes_per_token(torch.float32) == model.cfg.n_layers * 40 * 4


def test_k2_caches_576_values_per_token_and_layer() -> None:
    from kimi_lab.model.params import decode_cache

    c = decode_cache(to_run_config(compose(["model=k2"])).model)
    assert c["values_per_token_per_layer"] == 576  # kv_lora_rank 512 + qk_rope_head_dim 64
    assert c["expanded_values_per_token_per_layer"] == 64 * (128 + 64 + 128)
    assert c["bytes_per_token_bf16"] == 61 * 576 * 2


def test_cache_refuses_tokens_beyond_its_length() -> None:
    lm = _model().language_model
    cache = lm.new_cache(4)
    with torch.no_grad():
        lm(torch.randint(40, 500, (1, 4)), cache=cache)
        with pytest.raises(ValueError, match="holds 4 tokens"):
            lm(torch.randint(40, 500, (1, 1)), cache=cache)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("tokens", [1, 3, 16])
def test_every_decode_experts_form_equals_the_reference(strategy: str, tokens: int) -> None:
    if strategy == "grouped" and not hasattr(torch, "_grouped_mm"):
        pytest.skip(f"torch {torch.__version__} has no torch._grouped_mm (2.8 or newer)")
    torch.manual_seed(0)
    ex = TorchExperts(8, 32, 16)
    x = torch.randn(tokens, 32)
    idx = torch.stack([torch.randperm(8)[:2] for _ in range(tokens)])
    w = torch.rand(tokens, 2)
    with torch.no_grad():
        got = decode_experts(x, idx, w, ex.w1, ex.w3, ex.w2, strategy)
        assert (got - reference_experts(ex, x, idx, w)).abs().max() < 1e-5


def test_the_batched_decode_form_with_overflow_rows_equals_the_reference(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kimi_lab.model.moe import decode

    monkeypatch.setattr(
        decode, "batched_capacity", lambda *a, **k: 1
    )  # one row per expert, the rest overflow
    torch.manual_seed(0)
    ex = TorchExperts(8, 32, 16)
    x, w = torch.randn(16, 32), torch.rand(16, 2)
    idx = torch.stack([torch.zeros(16, dtype=torch.long), torch.randint(1, 8, (16,))], dim=1)  # expert 0 hot
    with torch.no_grad():
        got = decode_experts(x, idx, w, ex.w1, ex.w3, ex.w2, "batched")
        assert (got - reference_experts(ex, x, idx, w)).abs().max() < 1e-5


def test_decode_strategy_without_routing_depends_on_shapes_only() -> None:
    w_cpu = torch.empty(16, 128, 256)
    assert decode_strategy(1, 2, w_cpu) == "loop"  # 2 pairs: a matmul per hit expert
    # grouped GEMM where torch has it (2.8 or newer), else the dense form
    assert decode_strategy(16, 2, w_cpu) == ("grouped" if hasattr(torch, "_grouped_mm") else "dense")
    odd = torch.empty(384, 6, 6)  # sizes grouped GEMM cannot take
    assert decode_strategy(16, 8, odd) == "dense"
    assert decode_strategy(4, 8, odd) == "gather"  # 32 pairs against 384 experts


def test_decode_takes_the_batched_call_when_its_padding_pays(monkeypatch: pytest.MonkeyPatch) -> None:
    from kimi_lab.model.moe import expert_path

    monkeypatch.setattr(
        expert_path, "calibration", lambda *a, **k: expert_path.Calibration(3.0, 16.0)
    )  # as if measured
    w_cpu = torch.empty(16, 128, 256)
    even = torch.stack([torch.arange(16), (torch.arange(16) + 1) % 16], dim=1)  # 2 pairs per expert
    assert decode_strategy(16, 2, w_cpu, even) == "batched"  # no padding at all
    few = torch.stack([torch.arange(16), (torch.arange(16) + 1) % 8], dim=1)  # C = 3: 48 rows for 32
    assert decode_strategy(16, 2, w_cpu, few) == "batched"
    skewed = torch.stack([torch.zeros(16, dtype=torch.long), torch.arange(16) % 2 + 1], dim=1)  # C = 16
    assert decode_strategy(16, 2, w_cpu, skewed) == "grouped"  # 256 rows for 32 pairs
    monkeypatch.setattr(expert_path, "calibration", lambda *a, **k: expert_path.Calibration(1.2, 16.0))
    assert decode_strategy(16, 2, w_cpu, few) == "grouped"  # the measured gain does not cover 1.5x rows


def test_moe_layer_takes_the_decode_path_only_for_few_tokens_without_grad(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kimi_lab.model.moe import layer as layer_mod

    moe = _model().language_model.moe_layers[0]
    calls: list[int] = []
    real = layer_mod.decode_experts

    def spy(x_TD: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
        calls.append(x_TD.shape[0])
        return real(x_TD, *args)

    monkeypatch.setattr(layer_mod, "decode_experts", spy)
    x = torch.randn(2, 3, 64)
    with torch.no_grad():
        fast, _ = moe(x)
        moe.decode_path = False
        slow, _ = moe(x)
        moe.decode_path = True
        moe(torch.randn(1, layer_mod.DECODE_MAX_TOKENS + 1, 64))  # too many tokens: the training path
    moe(x)  # with gradients: the training path
    assert calls == [6]
    assert (fast - slow).abs().max() < 1e-5


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_decode_step_never_waits_for_the_gpu(dtype: torch.dtype) -> None:
    """CUDA's sync debug mode turns any host synchronisation inside the step into an error."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    lm = _model().language_model.to("cuda", dtype)
    cache = lm.new_cache(12)
    ids = torch.randint(40, 500, (3, 8), device="cuda")
    with torch.inference_mode():
        lm(ids, cache=cache)  # the prompt may synchronise (padding check)
        tok = torch.randint(40, 500, (3, 1), device="cuda")
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(3):
                tok = lm(tok, cache=cache, logits_to_keep=1).logits[:, -1].argmax(-1, keepdim=True)
        finally:
            torch.cuda.set_sync_debug_mode("default")
