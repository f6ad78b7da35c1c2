"""The K2 decoder: shapes, causality, and logit parity with transformers' DeepSeek-V3."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from kimi_lab.config import compose, to_run_config
from kimi_lab.config.schema import ModelConfig, RopeScaling
from kimi_lab.model import K2Model, count_params
from kimi_lab.model.multimodal import KimiK25


def tiny(**changes) -> ModelConfig:
    cfg = to_run_config(compose(["model=tiny"])).model
    return replace(cfg, **changes)


def test_tiny_preset_is_well_under_a_million_parameters() -> None:
    c = count_params(tiny())
    assert c.total < 1_000_000
    assert c.routed_experts > 0 and c.dense_ffn > 0 and c.shared_experts > 0


def test_forward_shapes_and_inputs_embeds_equivalence() -> None:
    torch.manual_seed(0)
    model = K2Model(tiny()).eval()
    ids = torch.randint(0, 512, (2, 11))
    out = model(ids)
    assert out.logits.shape == (2, 11, 512)
    assert out.hidden.shape == (2, 11, 64)
    again = model(inputs_embeds=model.embed(ids))
    torch.testing.assert_close(out.logits, again.logits)


def test_causal_future_tokens_do_not_change_past_logits() -> None:
    torch.manual_seed(0)
    model = K2Model(tiny()).eval()
    ids = torch.randint(0, 512, (1, 12))
    changed = ids.clone()
    changed[0, 8:] = (changed[0, 8:] + 7) % 512
    a, b = model(ids).logits, model(changed).logits
    torch.testing.assert_close(a[:, :8], b[:, :8])
    assert not torch.allclose(a[:, 8:], b[:, 8:])


PARITY_CASES = {
    "tiny": {},
    "q_lora+yarn": {"q_lora": True, "yarn": True},
}


@pytest.mark.parametrize("case", sorted(PARITY_CASES))
def test_logits_match_transformers_deepseek_v3(case: str) -> None:
    """fp32, same weights: our MLA + MoE decoder equals transformers' reference implementation."""
    pytest.importorskip("transformers")
    from kimi_lab.hf.in_memory import to_transformers

    opts = PARITY_CASES[case]
    cfg = tiny(n_layers=3)
    cfg = replace(cfg, moe=replace(cfg.moe, routed_scaling_factor=2.5))
    if opts.get("q_lora"):
        cfg = replace(cfg, attention=replace(cfg.attention, q_lora_rank=24))
    if opts.get("yarn"):
        rope = replace(
            cfg.attention.rope,
            scaling=RopeScaling.yarn,
            factor=4.0,
            original_max_seq_len=16,
            mscale=1.0,
            mscale_all_dim=1.0,
        )
        cfg = replace(cfg, attention=replace(cfg.attention, rope=rope))
    torch.manual_seed(0)
    model = KimiK25(cfg).eval()
    with torch.no_grad():  # non-trivial norms and selection biases, so the mapping of each is tested
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
        for layer in model.language_model.moe_layers:
            layer.router.expert_bias.uniform_(-0.05, 0.05)
    hf = to_transformers(model)
    ids = torch.randint(0, cfg.vocab_size, (2, 20))
    with torch.no_grad():
        ours = model(ids).logits
        theirs = hf(input_ids=ids).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_padding_mask_matches_transformers() -> None:
    pytest.importorskip("transformers")
    from kimi_lab.hf.in_memory import to_transformers

    torch.manual_seed(0)
    model = KimiK25(tiny()).eval()
    hf = to_transformers(model)
    ids = torch.randint(0, 512, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 9:] = 0  # the second row is padded at the end
    with torch.no_grad():
        ours = model(ids, attention_mask=mask).logits
        theirs = hf(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(ours[0], theirs[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours[1, :9], theirs[1, :9], rtol=1e-4, atol=1e-4)
