"""KV-cached sampling equals re-running the whole prefix, for a batch of unequal prompts."""

from __future__ import annotations

import pytest
import torch

from kimi_lab.config import compose, to_run_config
from kimi_lab.decode.generation import DecodeOptions, Prompt, generate
from kimi_lab.model.multimodal import KimiK25


def _model() -> KimiK25:
    torch.manual_seed(0)
    return KimiK25(to_run_config(compose(["model=tiny"])).model)


def test_greedy_cached_generation_matches_full_recompute() -> None:
    m = _model()
    prompts = [Prompt(torch.randint(40, 500, (n,)).tolist()) for n in (5, 9, 2)]
    gens = generate(m, prompts, DecodeOptions(10, (0,), 1, temperature=0))
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
    gens = generate(m, prompts, DecodeOptions(6, (first,), 1, temperature=0))
    assert gens[0].tokens == [first] and gens[0].finished
    assert len(gens[1].tokens) == 6 or gens[1].finished
    assert m.training


def test_sampling_is_reproducible_with_a_generator() -> None:
    m = _model()
    p = [Prompt([50, 60])] * 3
    a = generate(m, p, DecodeOptions(8, (0,), 1, generator=torch.Generator().manual_seed(1)))
    b = generate(m, p, DecodeOptions(8, (0,), 1, generator=torch.Generator().manual_seed(1)))
    assert [g.tokens for g in a] == [g.tokens for g in b]


def test_top_p_samples_only_from_the_nucleus() -> None:
    from kimi_lab.decode.generation import sample_tokens

    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logp = probs.log().expand(4000, 4)
    g = torch.Generator().manual_seed(0)
    # top_p=0.7: 0.5 < 0.7 so the second token joins; 0.8 >= 0.7 closes the nucleus
    counts = torch.bincount(sample_tokens(logp, 1.0, None, g, top_p=0.7), minlength=4)
    assert counts[2] == counts[3] == 0
    assert abs(counts[0] / counts[:2].sum() - 0.5 / 0.8) < 0.03  # renormalised within the nucleus
    assert set(sample_tokens(logp, 1.0, None, g, top_p=0.01).tolist()) == {0}  # the top token always stays
    everything = torch.bincount(sample_tokens(logp, 1.0, None, g, top_p=1.0), minlength=4)
    assert (everything > 0).all()  # top_p=1 changes nothing
    sharp = torch.bincount(sample_tokens(logp, 0.5, None, g, top_p=0.7), minlength=4)
    assert sharp[2] == sharp[3] == 0 and sharp[1] > 0  # after temperature: [0.71, 0.26, ...]


def test_on_token_can_stop_generation() -> None:
    m = _model()
    prompts = [Prompt([50, 60, 70]), Prompt([80])]
    seen: list[list[int | None]] = []
    greedy = DecodeOptions(6, (0,), 1, temperature=0)
    gens = generate(m, prompts, greedy, on_token=lambda step: seen.append(step.tokens) and None)
    assert gens == generate(m, prompts, DecodeOptions(6, (0,), 1, temperature=0))  # watching changes nothing
    for row, g in enumerate(gens):
        assert [s[row] for s in seen if s[row] is not None] == g.tokens  # every token, as sampled, in order
    stopped = generate(m, prompts, greedy, on_token=lambda step: True)
    assert [g.tokens for g in stopped] == [g.tokens[:1] for g in gens]  # stopped after the first step
    assert not any(g.finished for g in stopped if g.tokens[-1] != 0)


def _hf_greedy(hf: torch.nn.Module, prompts: list[Prompt], new: int, pad: int) -> list[list[int]]:
    from kimi_lab.decode.generation import vision_inputs

    L = max(len(p.tokens) for p in prompts)
    ids = torch.tensor([[pad] * (L - len(p.tokens)) + p.tokens for p in prompts])
    mask = (torch.arange(L)[None] >= torch.tensor([L - len(p.tokens) for p in prompts])[:, None]).long()
    hf.generation_config.eos_token_id = None
    vision = vision_inputs([b for p in prompts for b in p.blocks])
    with torch.no_grad():
        out = hf.generate(
            input_ids=ids,
            attention_mask=mask,
            **vision,
            do_sample=False,
            max_new_tokens=new,
            pad_token_id=pad,
        )
    return out[:, L:].tolist()


def test_greedy_tokens_equal_transformers_generate_for_left_padded_prompts() -> None:
    pytest.importorskip("transformers")
    from kimi_lab.hf.in_memory import to_transformers

    m = _model()
    torch.manual_seed(3)
    prompts = [Prompt(torch.randint(40, 500, (n,)).tolist()) for n in (11, 4, 7, 1)]
    ours = [g.tokens for g in generate(m, prompts, DecodeOptions(12, (), 0, temperature=0))]
    assert ours == _hf_greedy(to_transformers(m), prompts, 12, pad=0)


def test_greedy_tokens_equal_transformers_generate_with_images() -> None:
    pytest.importorskip("transformers")
    import numpy as np

    from kimi_lab.config.schema import VisionDataConfig
    from kimi_lab.data.vision import image_block
    from kimi_lab.hf.in_memory import to_transformers

    torch.manual_seed(0)
    m = KimiK25(to_run_config(compose(["model=tiny-vl"])).model).eval()
    v, rng = m.cfg.vision, np.random.default_rng(0)
    prompts = []
    for i, (h, w, n) in enumerate([(56, 84, 6), (28, 28, 2), (84, 56, 9)]):
        block = image_block(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), VisionDataConfig(max_patches=64))
        text = torch.randint(40, 500, (n,)).tolist()
        prompts.append(Prompt([100 + i, 16, *[v.image_token_id] * block.n_tokens, 17, *text], [block]))
    ours = [g.tokens for g in generate(m, prompts, DecodeOptions(8, (), 0, temperature=0))]
    assert ours == _hf_greedy(to_transformers(m), prompts, 8, pad=0)


def test_stream_and_on_token_see_every_step_as_generate_returns_it() -> None:
    from kimi_lab.decode.generation import Step, generate_stream

    m = _model()
    prompts = [Prompt([50, 60, 70]), Prompt([80])]
    with torch.no_grad():
        first = int(m(torch.tensor([[80]])).logits[0, -1].argmax())
    gens = generate(m, prompts, DecodeOptions(5, (first,), 1, temperature=0))
    assert gens[1].tokens == [first] and gens[1].finished  # row 1 stops at once, row 0 goes on
    seen: list[Step] = []
    again = generate(m, prompts, DecodeOptions(5, (first,), 1, temperature=0), on_token=seen.append)
    streamed = list(generate_stream(m, prompts, DecodeOptions(5, (first,), 1, temperature=0)))
    for steps in (seen, streamed):
        for row, g in enumerate(gens):
            assert [s.tokens[row] for s in steps if s.tokens[row] is not None] == g.tokens
            lps = [s.logprobs[row] for s in steps if s.logprobs[row] is not None]
            assert lps == pytest.approx(g.logprobs, abs=1e-6)
    assert [g.tokens for g in again] == [g.tokens for g in gens]
    assert len(streamed) == len(gens[0].tokens)


def test_stopping_a_stream_early_restores_training_mode() -> None:
    from kimi_lab.decode.generation import generate_stream

    m = _model().train()
    stream = generate_stream(m, [Prompt([50, 60])], DecodeOptions(10, (), 1, temperature=0))
    next(stream)
    assert not m.training and torch.is_grad_enabled()  # the caller's own mode between steps
    stream.close()
    assert m.training


def test_identical_prompts_are_encoded_once_and_sampled_apart() -> None:
    m = _model()
    a, b = Prompt([50, 60, 70, 80]), Prompt([90, 91])
    calls: list[int] = []
    hook = m.language_model.register_forward_pre_hook(
        lambda mod, args, kw: calls.append(kw["inputs_embeds"].shape[0]) if "inputs_embeds" in kw else None,
        with_kwargs=True,
    )
    try:
        gens = generate(m, [a, b, a, Prompt(list(a.tokens))], DecodeOptions(6, (), 1, temperature=0))
    finally:
        hook.remove()
    assert calls == [2]  # the prompt forward saw the two distinct prompts only
    alone = [generate(m, [p], DecodeOptions(6, (), 1, temperature=0))[0] for p in (a, b)]
    for g, ref in zip(gens, [alone[0], alone[1], alone[0], alone[0]], strict=True):
        assert g.tokens == ref.tokens and g.logprobs == pytest.approx(ref.logprobs, abs=1e-5)
    sampled = generate(m, [a] * 4, DecodeOptions(8, (), 1, generator=torch.Generator().manual_seed(0)))
    assert len({tuple(g.tokens) for g in sampled}) > 1  # copies of one prompt still sample apart


def test_rows_that_stop_leave_the_batch_without_changing_the_others() -> None:
    m = _model()
    torch.manual_seed(5)
    prompts = [Prompt(torch.randint(40, 500, (n,)).tolist()) for n in (6, 3, 8, 5)]
    free = generate(m, prompts, DecodeOptions(8, (), 1, temperature=0))
    stops = (free[0].tokens[1], free[2].tokens[0])  # rows 0 and 2 stop early, the batch shrinks
    gens = generate(m, prompts, DecodeOptions(8, stops, 1, temperature=0))
    assert gens[0].finished and gens[2].finished
    for p, g in zip(prompts, gens, strict=True):
        (alone,) = generate(m, [p], DecodeOptions(8, stops, 1, temperature=0))
        assert g.tokens == alone.tokens and g.finished == alone.finished
        assert g.logprobs == pytest.approx(alone.logprobs, abs=1e-5)
