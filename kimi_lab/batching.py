"""Continuous batching for ``kimi-lab serve``: concurrent requests decode together, step by step.

One engine thread owns the model and one latent cache for all running rows. Between two
decode steps it admits the requests that arrived (prefilled together by
``generation.prefill``, their cache stacked onto the running one: ``LatentCache.stack``),
then samples one token for every row with that row's own temperature, top-p, top-k, seed,
stop ids and token budget, hands each token to its request, and drops the rows that
finished or whose client went away (``Ticket.cancel``). The decode step itself is
``generation.decode_step``, the one ``generate`` takes, so a greedy request gets the tokens
``generate`` gives it alone. A request joins at the next step and leaves as soon as it is
done; nobody waits for a batch to fill or to drain (vLLM's scheduling, without paging: the
cache is re-stacked when a request joins, and its leading all-padding slots dropped).

Tokens reach each request's own queue; the HTTP thread that waits on a ``Ticket`` turns
them into text and writes them, so a slow client never holds up the others.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from kimi_lab.generation import (
    Generation,
    Prompt,
    banned_mask,
    decode_step,
    prefill,
    sample_tokens,
    step_logprobs,
)
from kimi_lab.model.kv_cache import LatentCache

log = logging.getLogger(__name__)


@dataclass
class SamplingParams:
    """How one request samples (``temperature`` 0: greedy)."""

    max_new_tokens: int
    stop_ids: tuple[int, ...]
    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None


class Ticket:
    """A submitted request: iterate ``tokens()`` as they are sampled, then read ``result``."""

    def __init__(self, prompt: Prompt, params: SamplingParams) -> None:
        self.prompt, self.params = prompt, params
        self._queue: queue.Queue[tuple[int, float] | Generation | BaseException] = queue.Queue()
        self.result: Generation | None = None
        self.cancelled = threading.Event()

    def tokens(self) -> Iterator[tuple[int, float]]:
        """(token, log-prob) as each is sampled; ends when the request is done (``result`` set).
        An error of the engine for this request is raised here."""
        while True:
            item = self._queue.get()
            if isinstance(item, Generation):
                self.result = item
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def wait(self) -> Generation:
        for _ in self.tokens():
            pass
        assert self.result is not None
        return self.result

    def cancel(self) -> None:
        """The client went away: its row leaves the batch at the next step, unfinished."""
        self.cancelled.set()


@dataclass
class _Row:
    ticket: Ticket
    generator: torch.Generator | None
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)


class Batcher:
    """The engine: ``submit`` from any thread; one thread runs the model for all of them."""

    def __init__(
        self,
        model: torch.nn.Module,
        pad_id: int,
        banned_ids: tuple[int, ...] = (),
        max_batch: int = 16,
        autocast: torch.dtype | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch={max_batch} must be >= 1")
        self.model, self.pad_id, self.max_batch, self.autocast = model, pad_id, max_batch, autocast
        self.device = next(model.parameters()).device
        self.banned = banned_mask(model.language_model.cfg.vocab_size, banned_ids, self.device)
        self._waiting: queue.Queue[Ticket | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.steps = 0  # decode steps run
        self.max_rows_seen = 0  # the widest batch a step ran
        self.running = 0  # rows in the batch now

    def start(self) -> Batcher:
        if self._thread is None:
            self.model.eval()
            self._thread = threading.Thread(target=self._loop, name="kimi-lab-batcher", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        self._closed = True
        self._waiting.put(None)
        if self._thread is not None:
            self._thread.join(timeout=60)

    def submit(self, prompt: Prompt, params: SamplingParams) -> Ticket:
        if not prompt.tokens:
            raise ValueError("a request needs at least one prompt token")
        if params.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        if self._closed:
            raise RuntimeError("the batcher is closed")
        ticket = Ticket(prompt, params)
        self._waiting.put(ticket)
        self.start()
        return ticket

    # ------------------------------------------------------------------ engine
    def _loop(self) -> None:
        with torch.inference_mode():  # the engine's tensors (cache, logits) never see autograd
            self._run()

    def _run(self) -> None:
        rows: list[_Row] = []
        cache: LatentCache | None = None
        logits = pos = None
        while True:
            newcomers = self._take(self.max_batch - len(rows), block=not rows)
            if newcomers is None:  # closed
                for r in rows:
                    r.ticket._queue.put(RuntimeError("the server is shutting down"))
                return
            if newcomers:
                rows, cache, logits, pos = self._admit(newcomers, rows, cache, logits, pos)
            self.running = len(rows)
            if not rows:
                cache = logits = pos = None
                continue
            assert cache is not None and logits is not None and pos is not None
            try:
                rows, cache, logits, pos = self._step(rows, cache, logits, pos)
            except Exception as exn:  # the server goes on; these requests get the error
                log.exception("decode step failed")
                for r in rows:
                    r.ticket._queue.put(exn)
                rows, cache, logits, pos = [], None, None, None
            self.running = len(rows)

    def _take(self, room: int, block: bool) -> list[Ticket] | None:
        """Up to ``room`` requests waiting now, in order of arrival (block for the first when
        ``block``); None once the batcher is closed."""
        out: list[Ticket] = []
        while len(out) < room:
            try:
                t = self._waiting.get(block=block and not out)
            except queue.Empty:
                break
            if t is None:
                return None
            out.append(t)
        return out

    def _admit(
        self,
        newcomers: list[Ticket],
        rows: list[_Row],
        cache: LatentCache | None,
        logits: torch.Tensor | None,
        pos: torch.Tensor | None,
    ) -> tuple[list[_Row], LatentCache | None, torch.Tensor | None, torch.Tensor | None]:
        """Prefill the newcomers and stack them onto the running batch; a newcomer that cannot
        be prefilled (e.g. an image the vision tower refuses) gets the error, the batch goes on."""
        for t in newcomers:
            if t.cancelled.is_set():  # gone before it started
                t._queue.put(Generation([], [], False))
        newcomers = [t for t in newcomers if not t.cancelled.is_set()]
        if not newcomers:
            return rows, cache, logits, pos
        budget = max(t.params.max_new_tokens for t in newcomers)
        try:
            new_logits, new_pos, new_cache = prefill(
                self.model, [t.prompt for t in newcomers], budget, self.pad_id, self.autocast
            )
        except Exception as exn:
            log.exception("prefill failed")
            for t in newcomers:
                t._queue.put(exn)
            return rows, cache, logits, pos
        new_rows = [_Row(t, self._generator(t.params.seed)) for t in newcomers]
        if cache is None or not rows:
            return new_rows, new_cache, new_logits, new_pos
        assert logits is not None and pos is not None
        # Enough free slots for what every row may still sample.
        room = max(r.ticket.params.max_new_tokens - len(r.tokens) for r in rows + new_rows)
        stacked = LatentCache.stack([cache, new_cache], room)
        return rows + new_rows, stacked, torch.cat([logits, new_logits]), torch.cat([pos, new_pos])

    def _generator(self, seed: int | None) -> torch.Generator | None:
        if seed is None:
            return None
        return torch.Generator(device=self.device).manual_seed(seed)

    def _step(
        self, rows: list[_Row], cache: LatentCache, logits: torch.Tensor, pos: torch.Tensor
    ) -> tuple[list[_Row], LatentCache | None, torch.Tensor | None, torch.Tensor | None]:
        """Sample every row's next token from ``logits``, hand them out, drop finished rows,
        and run the decode step of the rest."""
        logp = step_logprobs(logits, self.banned)
        toks = self._sample(rows, logp)
        chosen = logp.gather(1, toks[:, None]).squeeze(1)
        keep: list[int] = []
        for i, (r, t, lp) in enumerate(zip(rows, toks.tolist(), chosen.tolist(), strict=True)):
            p = r.ticket.params
            if r.ticket.cancelled.is_set():
                r.ticket._queue.put(Generation(r.tokens, r.logprobs, False))
                continue
            r.tokens.append(t)
            r.logprobs.append(lp)
            r.ticket._queue.put((t, lp))
            stopped = t in p.stop_ids
            if stopped or len(r.tokens) >= p.max_new_tokens:
                r.ticket._queue.put(Generation(r.tokens, r.logprobs, stopped))
            else:
                keep.append(i)
        self.max_rows_seen = max(self.max_rows_seen, len(rows))
        if not keep:
            return [], None, None, None
        if len(keep) < len(rows):
            idx = torch.tensor(keep, device=self.device)
            cache.select(idx)
            toks, pos = toks[idx], pos[idx]
            rows = [rows[i] for i in keep]
        logits = decode_step(self.model.language_model, toks, pos, cache, self.autocast)
        self.steps += 1
        return rows, cache, logits, pos + 1

    def _sample(self, rows: list[_Row], logp: torch.Tensor) -> torch.Tensor:
        """One token per row under that row's own parameters (greedy rows in one argmax)."""
        toks = logp.argmax(-1)
        for i, r in enumerate(rows):
            p = r.ticket.params
            if p.temperature > 0:
                toks[i] = sample_tokens(logp[i : i + 1], p.temperature, p.top_k, r.generator, p.top_p)[0]
        return toks
