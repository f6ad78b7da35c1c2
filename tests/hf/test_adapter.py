"""The one HF adapter: its map covers every tensor once and its two plans invert each other, per layout."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from kimi_lab.config import compose, to_run_config
from kimi_lab.hf.adapter import deinterleave_rows, interleave_rows, released_layout, transformers_layout
from kimi_lab.hf.config import export_config, parse_config
from kimi_lab.hf.export_tensors import CheckpointReader, export_tensors
from kimi_lab.hf.in_memory import from_hf_state_dict, to_hf_state_dict
from kimi_lab.model.multimodal import KimiK25


def random_model(model: str, tied: bool) -> KimiK25:
    cfg = to_run_config(compose([f"model={model}"])).model
    torch.manual_seed(0)
    m = KimiK25(replace(cfg, tie_embeddings=tied))
    with torch.no_grad():  # every tensor distinct, so a swapped or dropped mapping shows
        for p in m.parameters():
            p.normal_()
        for layer in m.language_model.moe_layers:
            layer.router.expert_bias.normal_()
    return m


@pytest.mark.parametrize("layout", ["released", "transformers"])
@pytest.mark.parametrize("model, tied", [("tiny", False), ("tiny", True), ("tiny-vl", False)])
def test_each_layout_round_trips_every_tensor_exactly(layout: str, model: str, tied: bool) -> None:
    m = random_model(model, tied)
    cfg = m.cfg
    state = {k: v.detach() for k, v in m.state_dict().items()}
    hf_config = parse_config(export_config(cfg, "float32", None))  # says rope_interleave, as released
    if layout == "released":  # what export-hf writes and import-hf reads
        hf_layout = released_layout(cfg)
    else:  # transformers' in-memory model, rotate-half rows as ours
        hf_layout, hf_config = transformers_layout(cfg), replace(hf_config, rope_interleave=False)
    written = [t.name for t in export_tensors(cfg, hf_layout, CheckpointReader(state), torch.float32)]
    assert len(written) == len(set(written))  # each HF tensor written once
    hf = to_hf_state_dict(state, cfg, hf_layout)
    assert ("lm_head.weight" in hf or "language_model.lm_head.weight" in hf) != tied
    back = from_hf_state_dict(hf, hf_config, {k: tuple(v.shape) for k, v in state.items()})
    assert back.keys() == state.keys()
    for name, t in state.items():
        assert torch.equal(back[name], t), name
    rotary = hf[f"{hf_layout.lm}layers.0.self_attn.kv_a_proj_with_mqa.weight"]
    permuted = not torch.equal(rotary, state["language_model.layers.0.attn.kv_a_proj.weight"])
    assert permuted == (layout == "released")  # the shared rotary key's rows, interleaved on the way out


def test_rope_rows_turn_interleaved_pairs_into_halves_and_back() -> None:
    # one head of 2 plain rows and 4 rotary rows stored as pairs (x0, x1), (x2, x3)
    w = torch.tensor([[10.0], [11.0], [0.0], [1.0], [2.0], [3.0]])
    halves = deinterleave_rows(w, n_heads=1, head_dim=6, rope_dim=4)
    assert halves.flatten().tolist() == [10.0, 11.0, 0.0, 2.0, 1.0, 3.0]
    assert torch.equal(interleave_rows(halves, 1, 6, 4), w)
