"""A kimi_lab model as a swarm policy: every agent's turn is sampled from the checkpoint.

Agents of a swarm act concurrently; sampling them one by one would serialise the
swarm on the model. ``CheckpointPolicy`` therefore queues the turns that arrive
together and samples them as one left-padded, KV-cached batch
(``kimi_lab.decode.generation.generate``) in a worker thread, so the event loop keeps
running tools and timers while the model works.

The returned ``Turn`` carries the exact prompt tokens and sampled tokens with their
log-probabilities, which is what PARL's loss re-scores for the orchestrator.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import torch

from kimi_lab.chat_format import ChatEncoder, Message, parse_assistant
from kimi_lab.decode.generation import DecodeOptions, Prompt, generate
from kimi_lab.swarm.types import ToolSpec, Turn


@dataclass
class _Request:
    tokens: list[int]
    future: asyncio.Future


class CheckpointPolicy:
    """Samples turns from ``model`` (a ``KimiK25``); concurrent calls are batched."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        max_new_tokens: int = 256,
        max_seq_len: int | None = None,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        max_batch: int = 16,
        batch_window_s: float = 0.002,
        name: str = "checkpoint",
    ) -> None:
        self.model = model
        self.tok = tokenizer
        self.enc = ChatEncoder(tokenizer)
        self.max_new_tokens = max_new_tokens
        self.max_seq_len = max_seq_len or model.language_model.cfg.max_seq_len
        self.temperature = temperature
        self.generator = generator
        self.max_batch = max_batch
        self.batch_window_s = batch_window_s
        self.name = name
        self._queue: list[_Request] = []
        self._flusher: asyncio.Task | None = None
        self._lock = asyncio.Lock()  # one generate() at a time: the model is not re-entrant

    def encode(self, messages: list[Message]) -> list[int]:
        return self.enc.encode(messages, add_generation_prompt=True).tokens

    async def act(self, messages: list[Message], tools: list[ToolSpec], role: str) -> Turn:
        # The runtime has already described the tools in the system message.
        tokens = self.encode(messages)
        room = self.max_seq_len - len(tokens)
        if room <= 0:
            return Turn(Message("assistant", ""), [], [], tokens, finished=False, errors=["context full"])
        loop = asyncio.get_running_loop()
        req = _Request(tokens, loop.create_future())
        self._queue.append(req)
        if len(self._queue) >= self.max_batch:
            self._schedule(loop, 0.0)
        elif self._flusher is None or self._flusher.done():
            self._schedule(loop, self.batch_window_s)
        tokens_out, logprobs, finished = await req.future
        parsed = parse_assistant(self.tok.decode(tokens_out), finished)
        return Turn(parsed.message, tokens_out, logprobs, tokens, finished, parsed.errors)

    def _schedule(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        self._flusher = loop.create_task(self._flush(delay))

    async def _flush(self, delay: float) -> None:
        try:
            await self._generate_batch(delay)
        finally:
            # Turns that arrived while this batch was sampled found a flush under way and queued
            # without scheduling one: serve them now, or they would wait for a turn that may never
            # come (the last episodes of a batch end and send none).
            if self._queue and self._flusher is asyncio.current_task():
                self._schedule(asyncio.get_running_loop(), 0.0)

    async def _generate_batch(self, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        async with self._lock:
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
            if not batch:
                return
            if self._queue:  # more arrived while we waited: they go in the next batch
                self._schedule(asyncio.get_running_loop(), 0.0)
            budget = min(self.max_new_tokens, *(self.max_seq_len - len(r.tokens) for r in batch))
            try:
                options = DecodeOptions(
                    budget,
                    self.enc.stop_ids,
                    self.tok.pad_id,
                    temperature=self.temperature,
                    generator=self.generator,
                    banned_ids=self.enc.banned_ids,
                )
                gens = await asyncio.to_thread(
                    generate, self.model, [Prompt(r.tokens) for r in batch], options
                )
            except Exception as e:  # every waiting agent learns of the failure
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(e)
                return
            for r, g in zip(batch, gens, strict=True):
                if not r.future.done():  # a cancelled agent no longer waits
                    r.future.set_result((g.tokens, g.logprobs, g.finished))


def load_checkpoint_policy(ckpt_path: str, **kw: Any) -> tuple[Any, CheckpointPolicy]:
    """(run config, policy) for a kimi_lab checkpoint, model on CPU in eval mode."""
    from kimi_lab.decode.loading import load_model

    loaded = load_model(ckpt_path)
    cfg, tok = loaded.config, loaded.tokenizer
    assert tok is not None
    return cfg, CheckpointPolicy(loaded.model, tok, max_seq_len=cfg.model.max_seq_len, **kw)
