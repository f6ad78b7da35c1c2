"""Initial weights that do not depend on the layout: any rank's part equals that part of the whole."""

from __future__ import annotations

import pytest
import torch

from kimi_lab.config.schema import ModelConfig, MoEBackend, MoEConfig, VisionConfig
from kimi_lab.errors import ConfigError
from kimi_lab.model.init import Rule, fill_, initialise_, materialise_
from kimi_lab.model.moe.dispatch import ExpertShard
from kimi_lab.model.multimodal import KimiK25

CFG = ModelConfig(
    moe=MoEConfig(backend=MoEBackend.torch),
    vision=VisionConfig(hidden_size=32, n_layers=1, n_heads=2, ffn_dim=64, pos_emb_size=4),
)


def test_a_box_of_a_tensor_gets_that_box_of_the_whole() -> None:
    rule = Rule("normal", 0.02)
    whole = torch.empty(40, 6, 9)
    fill_(whole, (40, 6, 9), (0, 0, 0), "w", rule, seed=5)
    part = torch.empty(7, 3, 9)  # rows 13-19, columns 2-4: as FSDP2 cuts dim 0, or dim 1
    fill_(part, (40, 6, 9), (13, 2, 0), "w", rule, seed=5)
    assert torch.equal(part, whole[13:20, 2:5])
    big = torch.empty(3, 1 << 19, 4)  # rows larger than a block: one row per block
    fill_(big, tuple(big.shape), (0, 0, 0), "w", rule, seed=5)
    assert big.std().item() == pytest.approx(0.02, rel=0.01)


def test_meta_model_materialised_equals_the_plain_one_and_expert_shards_their_rows() -> None:
    plain = KimiK25(CFG)
    initialise_(plain, CFG, seed=7)
    with torch.device("meta"):
        meta = KimiK25(CFG)
    experts = meta.language_model.layers[1].ffn.experts
    experts.shard_(ExpertShard(None, rank=1, size=2, n_experts=8))  # a DDP x EP rank's experts 4-7
    materialise_(meta, CFG, "cpu", seed=7)
    got, want = meta.state_dict(), plain.state_dict()
    for k, v in want.items():
        expected = v[4:8] if k.startswith("language_model.layers.1.ffn.experts.") else v
        assert torch.equal(got[k], expected), k
    rope = KimiK25(CFG).language_model.rope.inv_freq  # buffers as the constructor makes them
    assert torch.equal(meta.language_model.rope.inv_freq, rope)
    assert (meta.language_model.layers[1].ffn.router.expert_bias == 0).all()
    assert torch.isinf(meta.language_model.layers[0].attn.max_logit).all()


def test_a_parameter_without_a_rule_is_an_error() -> None:
    model = KimiK25(CFG)
    model.language_model.extra = torch.nn.Parameter(torch.zeros(3))  # an unknown kind of module
    with pytest.raises(ConfigError, match=r"no initialisation rule for parameter language_model\.extra"):
        initialise_(model, CFG, seed=0)
