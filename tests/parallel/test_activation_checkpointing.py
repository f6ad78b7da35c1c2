"""Activation checkpointing (``trainer.activation_checkpointing``) changes memory, not the math."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from kimi_lab.model.init import canonical_name, initialise_
from kimi_lab.model.multimodal import KimiK25
from kimi_lab.parallel.activation_checkpointing import apply_activation_checkpointing, unwrap
from tests.parallel.models import SMALL_MOE

CFG = replace(SMALL_MOE, moe=replace(SMALL_MOE.moe, seq_aux_loss_coef=0.01))


def _run(mode: str) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor, list[str]]:
    model = KimiK25(CFG)
    initialise_(model, CFG, seed=0)
    apply_activation_checkpointing(model, mode)
    tokens = torch.randint(0, CFG.vocab_size, (2, 17), generator=torch.Generator().manual_seed(0))
    out = model(tokens[:, :-1])
    loss = F.cross_entropy(out.logits.flatten(0, 1), tokens[:, 1:].flatten()) + out.aux_loss
    loss.backward()
    grads = {canonical_name(n): p.grad for n, p in model.named_parameters()}
    counts = torch.stack([layer.ffn.router.tokens_per_expert for layer in model.language_model.layers[1:]])
    wrapped = sum(unwrap(m) is not m for m in model.modules())
    assert wrapped == {"none": 0, "full": 3, "moe": 2}[mode]  # layers, or the MoE layers' experts
    return loss.detach(), grads, counts, list(model.state_dict())


@pytest.mark.parametrize("mode", ["full", "moe"])
def test_checkpointed_layers_give_the_plain_loss_and_gradients(mode: str) -> None:
    loss, grads, counts, keys = _run("none")
    loss_ac, grads_ac, counts_ac, keys_ac = _run(mode)
    assert keys_ac == keys  # checkpoints keep their names
    torch.testing.assert_close(loss_ac, loss, rtol=0, atol=0)
    assert grads_ac.keys() == grads.keys()
    for name, g in grads.items():
        torch.testing.assert_close(grads_ac[name], g, rtol=1e-6, atol=1e-7, msg=name)
    # recomputation in the backward pass routes the tokens again without counting them twice
    assert torch.equal(counts_ac, counts) and counts.sum() == 2 * 2 * 16 * 2


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="choose from none, full, moe"):
        apply_activation_checkpointing(KimiK25(CFG), "some")
