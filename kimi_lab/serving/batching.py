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

Errors stay with the requests they touch and the engine goes on: a newcomer whose prefill
fails (prefilled alone after the joint prefill failed) gets the error; a failing join (e.g.
out of memory) fails the newcomers and leaves the running rows as they were; a failing
decode step fails the rows of that step and the batch starts empty. Should the engine
thread itself stop, every request it holds or that waits gets the error and the next
``submit`` starts a new one: no client waits forever.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from kimi_lab.decode.generation import (
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


class _Prefilled(NamedTuple):
    """Requests prefilled together: their cache, next logits (B, V) and next positions (B, 1)."""

    tickets: list[Ticket]
    cache: LatentCache
    logits: torch.Tensor
    pos: torch.Tensor


@dataclass
class _Batch:
    """What the engine thread is decoding: the running rows, the requests being admitted, and
    the rows' shared decode state (cache, next logits, next positions)."""

    rows: list[_Row] = field(default_factory=list)
    joining: list[Ticket] = field(default_factory=list)
    cache: LatentCache | None = None
    logits: torch.Tensor | None = None
    pos: torch.Tensor | None = None

    def fail(self, exn: BaseException) -> None:
        """Every request in the batch gets ``exn``; the batch starts empty."""
        for t in [r.ticket for r in self.rows] + self.joining:
            t._queue.put(exn)
        self.rows, self.joining = [], []
        self.cache = self.logits = self.pos = None


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
        # Guards _thread and _closed: a request is queued and the engine's liveness checked in
        # one step, so no request lands in the queue of an engine that has just stopped.
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._batch = _Batch()
        self.steps = 0  # decode steps run
        self.max_rows_seen = 0  # the widest batch a step ran
        self.running = 0  # rows in the batch now

    def start(self) -> Batcher:
        with self._lock:
            self._start()
        return self

    def _start(self) -> None:
        """Start the engine thread unless it runs (again, after one that stopped); under the lock."""
        if self._thread is None:
            self.model.eval()
            self._thread = threading.Thread(target=self._loop, name="kimi-lab-batcher", daemon=True)
            self._thread.start()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._waiting.put(None)
            thread = self._thread
        if thread is not None:
            thread.join(timeout=60)

    def submit(self, prompt: Prompt, params: SamplingParams) -> Ticket:
        if not prompt.tokens:
            raise ValueError("a request needs at least one prompt token")
        if params.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        ticket = Ticket(prompt, params)
        with self._lock:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._waiting.put(ticket)
            self._start()
        return ticket

    # ------------------------------------------------------------------ engine
    def _loop(self) -> None:
        try:
            with torch.inference_mode():  # the engine's tensors (cache, logits) never see autograd
                self._run()
        except BaseException as exn:  # not an Exception (those end one step): the engine stops
            log.exception("the batching engine stopped")
            stopped = RuntimeError(f"the batching engine stopped: {exn!r}")
            with self._lock:
                self._thread = None  # the next submit starts a fresh engine
                self._batch.fail(stopped)
                while True:  # nobody would take what is queued
                    try:
                        t = self._waiting.get_nowait()
                    except queue.Empty:
                        break
                    if t is not None:
                        t._queue.put(stopped)
            self.running = 0

    def _run(self) -> None:
        b = self._batch
        while True:
            newcomers = self._take(self.max_batch - len(b.rows), block=not b.rows)
            if newcomers is None:  # closed
                b.fail(RuntimeError("the server is shutting down"))
                return
            b.joining = newcomers
            try:
                if newcomers:
                    self._admit(b)
                self.running = len(b.rows)
                if b.rows:
                    self._step(b)
            except Exception as exn:  # the engine goes on; the requests of this batch get the error
                log.exception("batching step failed")
                b.fail(exn)
            self.running = len(b.rows)

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

    def _admit(self, b: _Batch) -> None:
        """Prefill the joining requests and stack them onto the running batch; a request that
        cannot join gets the error, the batch goes on."""
        for t in b.joining:
            if t.cancelled.is_set():  # gone before it started
                t._queue.put(Generation([], [], False))
        parts = self._prefill([t for t in b.joining if not t.cancelled.is_set()])
        b.joining = []
        new_rows = [_Row(t, self._generator(t.params.seed)) for p in parts for t in p.tickets]
        if not new_rows:
            return
        if len(parts) == 1 and not b.rows:
            b.rows, b.cache, b.logits, b.pos = new_rows, parts[0].cache, parts[0].logits, parts[0].pos
            return
        running = [_Prefilled([], b.cache, b.logits, b.pos)] if b.rows else []  # type: ignore[arg-type]
        everything = running + parts
        # Enough free slots for what every row may still sample.
        room = max(r.ticket.params.max_new_tokens - len(r.tokens) for r in b.rows + new_rows)
        try:
            cache = LatentCache.stack([p.cache for p in everything], room)
            logits = torch.cat([p.logits for p in everything])
            pos = torch.cat([p.pos for p in everything])
        except Exception as exn:  # e.g. out of memory; stacking copies, the running rows are intact
            log.exception("joining the batch failed")
            for r in new_rows:
                r.ticket._queue.put(exn)
            return
        b.rows, b.cache, b.logits, b.pos = b.rows + new_rows, cache, logits, pos

    def _prefill(self, newcomers: list[Ticket]) -> list[_Prefilled]:
        """The newcomers prefilled together; when that fails, each alone, so that only a request
        that fails alone (e.g. an image the vision tower refuses) gets the error."""
        if len(newcomers) > 1:
            try:
                return [self._prefill_group(newcomers)]
            except Exception:
                log.warning(
                    "prefill of %d requests together failed: each alone", len(newcomers), exc_info=True
                )
        parts = []
        for t in newcomers:
            try:
                parts.append(self._prefill_group([t]))
            except Exception as exn:
                log.exception("prefill failed")
                t._queue.put(exn)
        return parts

    def _prefill_group(self, tickets: list[Ticket]) -> _Prefilled:
        budget = max(t.params.max_new_tokens for t in tickets)
        logits, pos, cache = prefill(
            self.model, [t.prompt for t in tickets], budget, self.pad_id, self.autocast
        )
        return _Prefilled(tickets, cache, logits, pos)

    def _generator(self, seed: int | None) -> torch.Generator | None:
        if seed is None:
            return None
        return torch.Generator(device=self.device).manual_seed(seed)

    def _step(self, b: _Batch) -> None:
        """Sample every row's next token from the batch's logits, hand them out, drop finished
        rows, and run the decode step of the rest."""
        assert b.cache is not None and b.logits is not None and b.pos is not None
        rows, cache, pos = b.rows, b.cache, b.pos
        logp = step_logprobs(b.logits, self.banned)
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
        # Finished rows leave now, so that an error of the decode step reaches only the others.
        b.rows = [rows[i] for i in keep]
        if not keep:
            b.cache = b.logits = b.pos = None
            return
        if len(keep) < len(rows):
            idx = torch.tensor(keep, device=self.device)
            cache.select(idx)
            toks, pos = toks[idx], pos[idx]
        b.logits = decode_step(self.model.language_model, toks, pos, cache, self.autocast)
        b.pos = pos + 1
        self.steps += 1

    def _sample(self, rows: list[_Row], logp: torch.Tensor) -> torch.Tensor:
        """One token per row under that row's own parameters (greedy rows in one argmax)."""
        toks = logp.argmax(-1)
        for i, r in enumerate(rows):
            p = r.ticket.params
            if p.temperature > 0:
                toks[i] = sample_tokens(logp[i : i + 1], p.temperature, p.top_k, r.generator, p.top_p)[0]
        return toks
