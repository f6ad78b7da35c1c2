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


def test_top_p_samples_only_from_the_nucleus() -> None:
    from kimi_lab.generation import _sample

    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logp = probs.log().expand(4000, 4)
    g = torch.Generator().manual_seed(0)
    # top_p=0.7: 0.5 < 0.7 so the second token joins; 0.8 >= 0.7 closes the nucleus
    counts = torch.bincount(_sample(logp, 1.0, None, g, top_p=0.7), minlength=4)
    assert counts[2] == counts[3] == 0
    assert abs(counts[0] / counts[:2].sum() - 0.5 / 0.8) < 0.03  # renormalised within the nucleus
    assert set(_sample(logp, 1.0, None, g, top_p=0.01).tolist()) == {0}  # the top token always stays
    everything = torch.bincount(_sample(logp, 1.0, None, g, top_p=1.0), minlength=4)
    assert (everything > 0).all()  # top_p=1 changes nothing
    sharp = torch.bincount(_sample(logp, 0.5, None, g, top_p=0.7), minlength=4)
    assert sharp[2] == sharp[3] == 0 and sharp[1] > 0  # after temperature: [0.71, 0.26, ...]


def test_on_step_streams_each_rows_tokens_and_can_stop() -> None:
    m = _model()
    prompts = [Prompt([50, 60, 70]), Prompt([80])]
    seen: list[list[int | None]] = []
    gens = generate(m, prompts, 6, (0,), 1, temperature=0, on_step=lambda toks: seen.append(toks) and None)
    assert gens == generate(m, prompts, 6, (0,), 1, temperature=0)  # watching changes nothing
    for row, g in enumerate(gens):
        assert [s[row] for s in seen if s[row] is not None] == g.tokens  # every token, as sampled, in order
    stopped = generate(m, prompts, 6, (0,), 1, temperature=0, on_step=lambda toks: True)
    assert [g.tokens for g in stopped] == [g.tokens[:1] for g in gens]  # stopped after the first step
    assert not any(g.finished for g in stopped if g.tokens[-1] != 0)
