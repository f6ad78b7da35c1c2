"""An assistant turn as it is sampled: token ids in, text deltas and finished tool calls out.

Shared by ``kimi-lab serve`` (server-sent events), ``kimi-lab generate`` and ``kimi-lab
chat`` (tokens printed as they come). The pieces add up to exactly what
``kimi_lab.chat_format.parse_assistant`` makes of the whole turn, so a streamed answer equals
the one returned at once:

- text is decoded incrementally; bytes of a character split across tokens wait for the
  rest (byte-level BPE), so no replacement character is ever shown;
- content is the text before the first tool call (or ``<|im_end|>``), stripped: leading
  whitespace is never sent and trailing whitespace waits until more text follows it; a
  text tail that could be the start of a marker waits until it is known not to be one;
- each tool call is handed out as soon as its ``<|tool_call_end|>`` arrives.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kimi_lab.chat_format import CALL_BEGIN, IM_END, ParsedAssistant, ToolCall, parse_assistant

_MARKERS = (CALL_BEGIN, IM_END)


class IncrementalDecoder:
    """Token ids -> text pieces whose concatenation is ``tokenizer.decode(all ids)``."""

    def __init__(self, tokenizer: Any) -> None:
        self.tok = tokenizer
        self._pending: list[int] = []  # tokens whose bytes do not yet end on a character boundary

    def push(self, token: int) -> str:
        self._pending.append(token)
        text = self.tok.decode(self._pending)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for its other bytes
            return ""
        self._pending = []
        return text

    def flush(self) -> str:
        text, self._pending = (self.tok.decode(self._pending) if self._pending else ""), []
        return text


def _held_suffix(text: str, markers: tuple[str, ...] = _MARKERS) -> int:
    """Length of the longest tail of ``text`` that is a proper prefix of a marker."""
    for n in range(min(len(text), max(map(len, markers)) - 1), 0, -1):
        if any(m.startswith(text[-n:]) for m in markers):
            return n
    return 0


@dataclass
class StreamEvents:
    content: str = ""  # new content text
    tool_calls: list[ToolCall] = field(default_factory=list)  # calls completed by this token


class AssistantStream:
    """Feed the sampled tokens of one assistant turn (stop tokens excluded), read the deltas.

    ``stop`` strings (the OpenAI ``stop`` parameter) end the turn where the first of them
    begins: nothing from there on is handed out, and ``stopped`` turns True."""

    def __init__(self, tokenizer: Any, stop: tuple[str, ...] = ()) -> None:
        self.decoder = IncrementalDecoder(tokenizer)
        self.text = ""
        self.sent = ""  # content handed out so far
        self.calls_sent = 0
        self.stop = tuple(s for s in stop if s)
        self.markers = _MARKERS + self.stop

    @property
    def stopped(self) -> bool:
        return any(s in self.text for s in self.stop)

    def _turn_text(self) -> str:
        """The text up to the first stop string."""
        cut = min((i for i in (self.text.find(s) for s in self.stop) if i >= 0), default=-1)
        return self.text if cut < 0 else self.text[:cut]

    def _content_so_far(self, final: bool) -> str:
        cut = min((i for i in (self.text.find(m) for m in self.markers) if i >= 0), default=-1)
        if cut >= 0:
            return self.text[:cut].strip()
        if final:
            return self.text.strip()
        visible = self.text[: len(self.text) - _held_suffix(self.text, self.markers)]
        return visible.strip()  # trailing whitespace waits: it may end the content

    def _new_calls(self, final: bool) -> list[ToolCall]:
        text = self._turn_text()
        if CALL_BEGIN not in text:
            return []
        calls = parse_assistant(text, finished=final or self.stopped).message.tool_calls
        new, self.calls_sent = calls[self.calls_sent :], len(calls)
        return new

    def _events(self, final: bool) -> StreamEvents:
        content = self._content_so_far(final)
        delta = content[len(self.sent) :] if content.startswith(self.sent) else ""
        self.sent += delta
        return StreamEvents(delta, self._new_calls(final))

    def push(self, token: int) -> StreamEvents:
        self.text += self.decoder.push(token)
        return self._events(final=False)

    def finish(self, finished: bool) -> tuple[StreamEvents, ParsedAssistant]:
        """The last deltas, and the whole turn parsed (its content equals what was streamed)."""
        self.text += self.decoder.flush()
        events = self._events(final=True)
        return events, parse_assistant(self._turn_text(), finished or self.stopped)
