"""Continuous batching: requests that join and leave a running batch get what they get alone."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

import pytest
import torch

from kimi_lab.config import compose, to_run_config
from kimi_lab.decode.generation import DecodeOptions, Prompt, generate
from kimi_lab.model.kv_cache import LatentCache
from kimi_lab.model.multimodal import KimiK25
from kimi_lab.serving import batching
from kimi_lab.serving.batching import Batcher, SamplingParams, Ticket

PAD = 1


@pytest.fixture(scope="module")
def model() -> KimiK25:
    torch.manual_seed(0)
    return KimiK25(to_run_config(compose(["model=tiny"])).model).eval()


def _prompts(n: int, seed: int = 3) -> list[Prompt]:
    g = torch.Generator().manual_seed(seed)
    return [Prompt(torch.randint(40, 500, (int(k),), generator=g).tolist()) for k in (7, 3, 11, 5, 2, 9)[:n]]


@contextlib.contextmanager
def _at_decode_step(model: KimiK25, n: int, fn: Callable[[], None]) -> Iterator[None]:
    """Call ``fn`` in the engine's thread just before its ``n``-th decode step (deterministic joins)."""
    seen = [0]

    def hook(mod: torch.nn.Module, args: tuple, kw: dict) -> None:
        ids = kw.get("input_ids")
        if ids is not None and ids.shape[1] == 1:
            seen[0] += 1
            if seen[0] == n:
                fn()

    handle = model.language_model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def _alone(model: KimiK25, p: Prompt, params: SamplingParams) -> list[int]:
    gen = None if params.seed is None else torch.Generator().manual_seed(params.seed)
    options = DecodeOptions(
        params.max_new_tokens, params.stop_ids, PAD, params.temperature, params.top_k, params.top_p, gen
    )
    (g,) = generate(model, [p], options)
    return g.tokens


def test_requests_joining_a_running_batch_get_their_one_at_a_time_tokens(model: KimiK25) -> None:
    prompts = _prompts(6)
    params = [
        SamplingParams(12, (), temperature=0),
        SamplingParams(5, (), temperature=0),
        SamplingParams(9, (), temperature=0.9, seed=1),  # sampled rows keep their own generator
        SamplingParams(7, (), temperature=0),
        SamplingParams(10, (), temperature=0.7, top_p=0.9, seed=2),
        SamplingParams(6, (), temperature=0),
    ]
    alone = [_alone(model, p, s) for p, s in zip(prompts, params, strict=True)]
    # a row that stops on its own stop token (one of its greedy tokens) leaves early
    params[3] = SamplingParams(7, (alone[3][2],), temperature=0)
    batcher = Batcher(model, PAD, max_batch=4)
    tickets = []

    def join() -> None:  # the first request is decoding: the rest arrive and join it
        tickets.extend(batcher.submit(p, s) for p, s in zip(prompts[1:], params[1:], strict=True))

    try:
        with _at_decode_step(model, 3, join):
            tickets.insert(0, batcher.submit(prompts[0], params[0]))
            first = tickets[0].wait().tokens  # 12 tokens: the others joined at its 3rd step
        results = [first] + [t.wait().tokens for t in tickets[1:]]
    finally:
        batcher.close()
    assert results[3] == alone[3][:3] and tickets[3].result.finished
    for i in (0, 1, 2, 4, 5):
        assert results[i] == alone[i], i
    assert batcher.max_rows_seen == 4  # never more rows than max_batch: the last two waited for room
    assert batcher.steps < sum(len(r) for r in results) - len(results)  # steps were shared


def test_a_cancelled_row_leaves_and_the_others_are_unchanged(model: KimiK25) -> None:
    prompts = _prompts(3, seed=4)
    greedy = SamplingParams(10, (), temperature=0)
    alone = [_alone(model, p, greedy) for p in prompts]
    batcher = Batcher(model, PAD)
    tickets: list[Ticket] = []
    try:
        with _at_decode_step(model, 2, lambda: tickets[1].cancel()):  # its client left
            tickets += [batcher.submit(p, greedy) for p in prompts]
            gone = tickets[1]
            gone.wait()
            others = [tickets[0].wait(), tickets[2].wait()]
    finally:
        batcher.close()
    assert not gone.result.finished and len(gone.result.tokens) <= 3  # gone by the engine's 2nd step
    assert [g.tokens for g in others] == [alone[0], alone[2]]


def test_a_failing_request_gets_the_error_and_the_engine_goes_on(model: KimiK25) -> None:
    prompt = _prompts(1)[0]
    greedy = SamplingParams(8, (), temperature=0)
    alone = _alone(model, prompt, greedy)
    batcher = Batcher(model, PAD)
    bad: list[Ticket] = []
    try:
        with _at_decode_step(model, 2, lambda: bad.append(batcher.submit(Prompt([10_000]), greedy))):
            good = batcher.submit(prompt, greedy)  # running when the bad one (outside the vocabulary) arrives
            assert good.wait().tokens == alone
        with pytest.raises(IndexError):
            bad[0].wait()
        assert len(batcher.submit(prompt, SamplingParams(3, ())).wait().tokens) == 3
    finally:
        batcher.close()


@pytest.mark.timeout(120)  # the old engine left these requests waiting forever
def test_a_bad_and_a_good_newcomer_at_one_step_only_the_bad_one_fails(model: KimiK25) -> None:
    running, good = _prompts(2, seed=7)
    greedy = SamplingParams(6, (), temperature=0)
    alone = [_alone(model, p, greedy) for p in (running, good)]
    batcher = Batcher(model, PAD)
    joined: list[Ticket] = []

    def join() -> None:  # both arrive while the first decodes: one prefill for the two
        joined.extend(batcher.submit(p, greedy) for p in (Prompt([10_000]), good))

    try:
        with _at_decode_step(model, 2, join):
            first = batcher.submit(running, greedy)
            assert first.wait().tokens == alone[0]
        with pytest.raises(IndexError):
            joined[0].wait()
        assert joined[1].wait().tokens == alone[1]
    finally:
        batcher.close()


def _fail_on_call(owner: object, name: str, at: int, error: BaseException, mp: pytest.MonkeyPatch) -> None:
    """``owner.name`` raises ``error`` on its ``at``-th call and works on the others."""
    real, calls = getattr(owner, name), [0]

    def failing(*args: object, **kw: object) -> object:
        calls[0] += 1
        if calls[0] == at:
            raise error
        return real(*args, **kw)

    mp.setattr(owner, name, failing)


@pytest.mark.timeout(120)
def test_a_failing_join_fails_the_newcomer_and_the_running_row_goes_on(
    model: KimiK25, monkeypatch: pytest.MonkeyPatch
) -> None:
    running, late = _prompts(2, seed=8)
    greedy = SamplingParams(6, (), temperature=0)
    alone = _alone(model, running, greedy)
    _fail_on_call(LatentCache, "stack", 1, torch.OutOfMemoryError("out of memory (injected)"), monkeypatch)
    batcher = Batcher(model, PAD)
    joined: list[Ticket] = []
    try:
        with _at_decode_step(model, 2, lambda: joined.append(batcher.submit(late, greedy))):
            assert batcher.submit(running, greedy).wait().tokens == alone
        with pytest.raises(torch.OutOfMemoryError):
            joined[0].wait()
    finally:
        batcher.close()


@pytest.mark.timeout(120)
def test_a_failing_decode_step_fails_its_rows_and_the_engine_goes_on(
    model: KimiK25, monkeypatch: pytest.MonkeyPatch
) -> None:
    prompt = _prompts(1, seed=9)[0]
    greedy = SamplingParams(5, (), temperature=0)
    alone = _alone(model, prompt, greedy)
    _fail_on_call(batching, "decode_step", 2, torch.OutOfMemoryError("out of memory (injected)"), monkeypatch)
    batcher = Batcher(model, PAD)
    try:
        doomed = [batcher.submit(p, greedy) for p in _prompts(2, seed=10)]
        for t in doomed:  # both rows were in the failing step
            with pytest.raises(torch.OutOfMemoryError):
                t.wait()
        assert batcher.submit(prompt, greedy).wait().tokens == alone
    finally:
        batcher.close()


class _EngineKilled(BaseException):
    """Not an ``Exception``: nothing in a step catches it, the engine thread ends."""


@pytest.mark.timeout(120)
def test_a_stopped_engine_fails_its_requests_and_the_next_submit_starts_a_new_one(
    model: KimiK25, monkeypatch: pytest.MonkeyPatch
) -> None:
    prompt = _prompts(1, seed=11)[0]
    greedy = SamplingParams(4, (), temperature=0)
    alone = _alone(model, prompt, greedy)
    _fail_on_call(batching, "decode_step", 1, _EngineKilled(), monkeypatch)
    batcher = Batcher(model, PAD)
    try:
        with pytest.raises(RuntimeError, match="engine stopped"):
            batcher.submit(prompt, greedy).wait()
        assert batcher.submit(prompt, greedy).wait().tokens == alone
    finally:
        batcher.close()


def test_stacked_caches_give_each_row_its_own_next_logits(model: KimiK25) -> None:
    from kimi_lab.decode.generation import decode_step, prefill

    lm = model.language_model
    a, b = _prompts(2, seed=5)
    la, pa, ca = prefill(model, [a], 4, PAD)
    lb, pb, cb = prefill(model, [b], 4, PAD)
    ta, tb = la.argmax(-1), lb.argmax(-1)
    alone = torch.cat([decode_step(lm, ta, pa, ca), decode_step(lm, tb, pb, cb)])
    la, pa, ca = prefill(model, [a], 4, PAD)
    lb, pb, cb = prefill(model, [b], 4, PAD)
    both = LatentCache.stack([ca, cb], 4)
    assert both.length == max(len(a.tokens), len(b.tokens))
    together = decode_step(lm, torch.cat([ta, tb]), torch.cat([pa, pb]), both)
    assert torch.allclose(together, alone, atol=1e-5)


def test_submit_from_many_threads(model: KimiK25) -> None:
    prompts = _prompts(4, seed=6)
    greedy = SamplingParams(6, (), temperature=0)
    alone = [_alone(model, p, greedy) for p in prompts]
    got: dict[int, list[int]] = {}
    batcher = Batcher(model, PAD)

    def one(i: int) -> None:
        got[i] = batcher.submit(prompts[i], greedy).wait().tokens

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
    finally:
        batcher.close()
    assert [got[i] for i in range(4)] == alone
