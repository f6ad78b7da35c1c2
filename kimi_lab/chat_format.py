"""The chat format shared by SFT, RL and the agent swarm: roles, tool calls, tool results.

A conversation is a list of messages with roles ``system``, ``user``, ``assistant``
and ``tool``. In tokens, each message is

    <|im_start|><|ROLE|> content [images] [tool calls] <|im_end|>

An assistant's tool call is ``<|tool_call_begin|>NAME\\nINPUT<|tool_call_end|>``:
the tool's name on the first line, then its input verbatim (Python source for the
``python`` tool, JSON for tools with several arguments), so a model never has to
escape code inside JSON. A tool message wraps its output as
``<|tool_result_begin|> ... <|tool_result_end|>``. Images (user inputs, images a tool
saved) become vision placeholder runs ``<|media_start|><|image_pad|>*n<|media_end|>``;
a clip (a screen recording in a prompt) one ``<|video_pad|>`` run per chunk of frames.

Training targets are the assistant's tokens after its header, ``<|im_end|>``
included (so a model learns to stop); everything else is context. Generation
starts after ``<|im_start|><|assistant|>`` and stops at ``<|im_end|>``;
``parse_assistant`` turns what was generated back into content and tool calls,
and reports a malformed call as an error for the model to read, never a crash.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant", "tool")
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
CALL_BEGIN, CALL_END = "<|tool_call_begin|>", "<|tool_call_end|>"
RESULT_BEGIN, RESULT_END = "<|tool_result_begin|>", "<|tool_result_end|>"
MEDIA_START, MEDIA_END, IMAGE_PAD = "<|media_start|>", "<|media_end|>", "<|image_pad|>"
TOOLS_HEADER = "Tools:"  # ends the first line of ``render_tools``
TOOL_CALL_SYNTAX = f"Call a tool as {CALL_BEGIN}NAME\\nINPUT{CALL_END}."  # its start: how to write a call
VIDEO_PAD = "<|video_pad|>"
_TOOL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
_ANSWER = re.compile(r"(?im)^\s*answer\s*:\s*(.+?)\s*$")


class ChatFormatError(ValueError):
    """A conversation that breaks the format (bad role, tool result without a call, ...)."""


@dataclass
class ToolCall:
    name: str
    input: str

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "input": self.input}


@dataclass
class Message:
    role: str
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    # Names of images (or clips) attached to this message (user inputs, images a tool saved);
    # the media themselves travel beside the conversation (sample files, tool results).
    images: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            d["tool_calls"] = [c.to_dict() for c in self.tool_calls]
        if self.images:
            d["images"] = list(self.images)
        return d

    @classmethod
    def from_dict(cls, d: Any) -> Message:
        if not isinstance(d, dict) or d.get("role") not in ROLES:
            raise ChatFormatError(f"a message needs a role among {', '.join(ROLES)} (got {d!r:.80})")
        content = d.get("content", "")
        calls = d.get("tool_calls", [])
        images = d.get("images", [])
        if not isinstance(content, str) or not isinstance(calls, list) or not isinstance(images, list):
            raise ChatFormatError(
                f"bad {d['role']} message: content must be text, tool_calls and images lists"
            )
        parsed = []
        for c in calls:
            if (
                not isinstance(c, dict)
                or not isinstance(c.get("name"), str)
                or not isinstance(c.get("input"), str)
            ):
                raise ChatFormatError(f"bad tool call {c!r:.80}: needs a name and an input string")
            parsed.append(ToolCall(c["name"], c["input"]))
        return cls(d["role"], content, parsed, [str(i) for i in images])


def conversation_from_list(items: Any, require_assistant: bool = True) -> list[Message]:
    """Messages from their dicts, checked; ``require_assistant=False`` admits a prompt (no reply yet)."""
    if not isinstance(items, list) or not items:
        raise ChatFormatError("a conversation is a non-empty list of messages")
    messages = [Message.from_dict(d) for d in items]
    validate(messages, require_assistant)
    return messages


def validate(messages: list[Message], require_assistant: bool = True) -> None:
    """Structure rules: tool calls only from the assistant, every tool message answers one."""
    pending = 0
    for i, m in enumerate(messages):
        if m.role != "assistant" and m.tool_calls:
            raise ChatFormatError(f"message {i}: only the assistant makes tool calls (role {m.role})")
        for c in m.tool_calls:
            if not _TOOL_NAME.fullmatch(c.name):
                raise ChatFormatError(f"message {i}: bad tool name {c.name!r}")
        if m.role == "tool":
            if pending == 0:
                raise ChatFormatError(f"message {i}: a tool result without a pending tool call")
            pending -= 1
        elif m.role == "assistant":
            pending = len(m.tool_calls)
        else:
            pending = 0
    if require_assistant and not any(m.role == "assistant" for m in messages):
        raise ChatFormatError("the conversation has no assistant message")


@dataclass(frozen=True)
class ToolSpec:
    """A tool as a model is told of it."""

    name: str
    description: str  # one line
    input_format: (
        str  # what a call's input is: 'a search query', '{"agent": NAME, "prompt": TEXT}'; "": not said
    )


def render_tools(tools: Sequence[ToolSpec]) -> str:
    """The tools a model may call, as its system message lists them.

    The one rendering: the swarm's prompts (and so its training data), the tools a
    ``kimi-lab serve`` request declares (``openai_format.declared_tools``) and the exported
    chat template (``chat_template``) all write it, so a model sees the same words wherever
    it runs."""
    lines = [f"{TOOL_CALL_SYNTAX} {TOOLS_HEADER}"]
    for t in tools:
        lines.append(
            f"- {t.name}: {t.description}" + (f". Input: {t.input_format}" if t.input_format else "")
        )
    return "\n".join(lines)


def with_tools(messages: list[Message], tools: Sequence[ToolSpec]) -> list[Message]:
    """The conversation with its tools listed at the end of the system message (one is added
    first when there is none), unless a system message already lists them (the swarm's
    prompts do: its policies also declare the tools to a server)."""
    if not tools:
        return messages
    block = render_tools(tools)
    if any(block in m.content for m in messages if m.role == "system"):
        return messages
    if messages and messages[0].role == "system":
        return [Message("system", messages[0].content + "\n\n" + block), *messages[1:]]
    return [Message("system", block), *messages]


# ----------------------------------------------------------------------- rendering
def image_marker(name: str) -> str:
    """An image's text form; in a message's content it also marks where the image goes."""
    return f"<image:{name}>"


def content_pieces(m: Message) -> list[tuple[str, str | None]]:
    """The message's content as (text, None) and (marker, image name) pieces in order: an image
    whose marker is in the content goes there (the first occurrence), the others after it."""
    pieces: list[tuple[str, str | None]] = []
    text = m.content
    placed = [n for n in m.images if image_marker(n) in text]
    while placed:
        name = min(placed, key=lambda n: text.index(image_marker(n)))
        before, _, text = text.partition(image_marker(name))
        pieces += [(before, None), (image_marker(name), name)]
        placed = [n for n in placed if n != name and image_marker(n) in text]
    pieces.append((text, None))
    inline = {n for _, n in pieces if n is not None}
    pieces += [(image_marker(n), n) for n in m.images if n not in inline]
    return [(t, n) for t, n in pieces if t]


@dataclass
class EncodedChat:
    """One conversation in tokens: ``train[i]`` is True where ``tokens[i]`` is a training target."""

    tokens: list[int]
    train: list[bool]
    media: list[tuple[int, str]]  # (offset of <|media_start|>, media name) per run, in order


class ChatEncoder:
    """Conversations -> token ids with target flags.

    ``image_tokens(name)`` gives each medium's placeholder count: an int for an image (one
    ``<|image_pad|>`` run), a list for a clip (one ``<|video_pad|>`` run per chunk; ``media``
    then names the clip once per run).
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tok = tokenizer
        ids = {
            s: tokenizer.token_id(s)
            for s in (IM_START, IM_END, CALL_BEGIN, CALL_END, RESULT_BEGIN, RESULT_END)
        }
        self.ids = ids
        self.role_id = {r: tokenizer.token_id(f"<|{r}|>") for r in ROLES}
        self.media_start = tokenizer.token_id(MEDIA_START)
        self.media_end = tokenizer.token_id(MEDIA_END)
        self.image_pad = tokenizer.token_id(IMAGE_PAD)
        self.video_pad = tokenizer.token_id(VIDEO_PAD)

    def header(self, role: str) -> list[int]:
        return [self.ids[IM_START], self.role_id[role]]

    def encode(
        self,
        messages: list[Message],
        image_tokens: Callable[[str], int | list[int]] | None = None,
        add_generation_prompt: bool = False,
    ) -> EncodedChat:
        out = EncodedChat([], [], [])
        for m in messages:
            trained = m.role == "assistant"
            self._extend(out, self.header(m.role), False)
            self._body(out, m, trained, image_tokens)
            self._extend(out, [self.ids[IM_END]], trained)
        if add_generation_prompt:
            self._extend(out, self.header("assistant"), False)
        return out

    def _extend(self, out: EncodedChat, ids: list[int], trained: bool) -> None:
        out.tokens.extend(ids)
        out.train.extend([trained] * len(ids))

    def _content(
        self,
        out: EncodedChat,
        m: Message,
        trained: bool,
        image_tokens: Callable[[str], int | list[int]] | None,
    ) -> None:
        """Text and media in the order ``content_pieces`` gives: an image is one placeholder run,
        a clip one run per chunk."""
        for text, name in content_pieces(m):
            if name is None:
                self._extend(out, self.tok.encode(text), trained)
            elif image_tokens is None:
                self._extend(out, self.tok.encode(text), False)
            else:
                runs = image_tokens(name)
                pad, sizes = (self.image_pad, [runs]) if isinstance(runs, int) else (self.video_pad, runs)
                for n in sizes:
                    out.media.append((len(out.tokens), name))
                    self._extend(out, [self.media_start, *[pad] * n, self.media_end], False)

    def _body(
        self,
        out: EncodedChat,
        m: Message,
        trained: bool,
        image_tokens: Callable[[str], int | list[int]] | None,
    ) -> None:
        if m.role == "tool":
            self._extend(out, [self.ids[RESULT_BEGIN]], False)
            self._content(out, m, False, image_tokens)
            self._extend(out, [self.ids[RESULT_END]], False)
            return
        self._content(out, m, trained, image_tokens)
        for c in m.tool_calls:
            self._extend(out, [self.ids[CALL_BEGIN]], trained)
            self._extend(out, self.tok.encode(f"{c.name}\n{c.input}"), trained)
            self._extend(out, [self.ids[CALL_END]], trained)

    @property
    def stop_ids(self) -> tuple[int, ...]:
        return (self.ids[IM_END], self.tok.eos_id)

    @property
    def banned_ids(self) -> tuple[int, ...]:
        """Tokens a model must never generate: vision placeholders and markers, padding."""
        return (self.media_start, self.media_end, self.image_pad, self.video_pad, self.tok.pad_id)


# ------------------------------------------------------------------------- parsing
@dataclass
class ParsedAssistant:
    message: Message
    errors: list[str]  # malformed calls, reported to the model as tool errors
    finished: bool  # ended with <|im_end|> (False: cut off by the token budget)


def parse_assistant(text: str, finished: bool = True) -> ParsedAssistant:
    """Generated assistant text (special tokens kept, <|im_end|> stripped) -> content + tool calls."""
    text = text.split(IM_END, 1)[0]
    content, _, rest = text.partition(CALL_BEGIN)
    calls: list[ToolCall] = []
    errors: list[str] = []
    if CALL_END in content:  # an end marker before any call began: the model broke the format
        errors.append("malformed tool call: <|tool_call_end|> without a <|tool_call_begin|> before it")
        content = content.replace(CALL_END, "")
    chunks = rest.split(CALL_BEGIN) if _ else []
    for chunk in chunks:
        body, closed, _after = chunk.partition(CALL_END)
        if not closed:
            errors.append("malformed tool call: no <|tool_call_end|> (the call was cut off)")
            continue
        name, newline, payload = body.partition("\n")
        name = name.strip()
        if not _TOOL_NAME.fullmatch(name):
            errors.append(f"malformed tool call: {name[:40]!r} is not a tool name (first line of the call)")
            continue
        calls.append(ToolCall(name, payload if newline else ""))
    return ParsedAssistant(Message("assistant", content.strip(), calls), errors, finished)


def extract_answer(text: str) -> str | None:
    """The final ``Answer: ...`` line of an assistant's text, if any."""
    found = _ANSWER.findall(text)
    return found[-1] if found else None
