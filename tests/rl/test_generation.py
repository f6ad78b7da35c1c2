"""KV-cached sampling equals re-running the whole prefix, for a batch of unequal prompts."""

from __future__ import annotations

import torch

from kimi_lab.config import compose, to_run_config
from kimi_lab.generation import Prompt, generate
from kimi_lab.model.multimodal import KimiK25


def _model() -> KimiK25:
    torch.manual_seed(0)
    return KimiK25(to_run_config(compose(["model=tiny"])).model)


def test_greedy_cached_generation_matches_full_recompute() -> None:
    m = _model()
    prompts = [Prompt(torch.randint(40, 500, (n,)).tolist()) for n in (5, 9, 2)]
    gens = generate(m, prompts, 10, stop_ids=(0,), pad_id=1, temperature=0)
    for p, g in zip(prompts, gens, strict=True):
        seq = list(p.tokens)
        for t, lp in zip(g.tokens, g.logprobs, strict=True):
            with torch.no_grad():
                logp = torch.log_softmax(m(torch.tensor([seq])).logits[0, -1], -1)
            assert int(logp.argmax()) == t
            assert abs(float(logp[t]) - lp) < 1e-4
            seq.append(t)


def test_generation_stops_per_row_and_restores_training_mode() -> None:
    m = _model().train()
    prompts = [Prompt([50, 60, 70]), Prompt([80])]
    with torch.no_grad():
        first = int(m(torch.tensor([[50, 60, 70]])).logits[0, -1].argmax())
    gens = generate(m, prompts, 6, stop_ids=(first,), pad_id=1, temperature=0)
    assert gens[0].tokens == [first] and gens[0].finished
    assert len(gens[1].tokens) == 6 or gens[1].finished
    assert m.training


def test_sampling_is_reproducible_with_a_generator() -> None:
    m = _model()
    p = [Prompt([50, 60])] * 3
    a = generate(m, p, 8, (0,), 1, generator=torch.Generator().manual_seed(1))
    b = generate(m, p, 8, (0,), 1, generator=torch.Generator().manual_seed(1))
    assert [g.tokens for g in a] == [g.tokens for g in b]
