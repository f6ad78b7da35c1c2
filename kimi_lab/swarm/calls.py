"""Checking what a policy returned: its turn, the JSON arguments of the swarm's tools, its context.

Everything here turns a policy's mistake into a ``Fault`` or an error text for the
model to read; nothing raises past the runtime.
"""

from __future__ import annotations

import json
import re
from typing import Any

from kimi_lab.chat_format import Message, ToolCall
from kimi_lab.swarm.trace import preview
from kimi_lab.swarm.types import Turn

# Sub-agent names are trace lanes and tool arguments: short identifiers.
AGENT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


class Fault(Exception):
    """A policy's failure, told to the orchestrator (a sub-agent's) or ending the episode (its own)."""


def check_turn(raw: Any) -> Turn:
    """``raw`` if it is a well-formed assistant Turn, else Fault."""
    if not isinstance(raw, Turn):
        raise Fault(f"the policy returned {type(raw).__name__}, not a Turn")
    m = raw.message
    if not isinstance(m, Message) or m.role != "assistant" or not isinstance(m.content, str):
        raise Fault(f"the policy's turn holds no assistant message ({preview(repr(m), 80)})")
    if not isinstance(m.tool_calls, list) or not all(
        isinstance(c, ToolCall) and isinstance(c.name, str) and isinstance(c.input, str) for c in m.tool_calls
    ):
        raise Fault("the policy's turn holds malformed tool calls")
    if not isinstance(raw.errors, list):
        raise Fault("the policy's turn holds malformed errors")
    return raw


def json_args(text: str, keys: tuple[str, ...], tool: str) -> dict[str, str] | str:
    """The call's JSON object with string ``keys``, or the error text."""
    want = "{" + ", ".join(f'"{k}": ...' for k in keys) + "}"
    try:
        d = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return f"{tool} takes a JSON object {want} (got {preview(text, 80)!r})"
    if not isinstance(d, dict) or not all(isinstance(d.get(k), str) for k in keys):
        return f"{tool} takes a JSON object {want} with text values (got {preview(text, 80)!r})"
    return d


def bound_context(messages: list[Message], limit: int, first: int = 2) -> None:
    """Cut the oldest tool results (from index ``first``) until the context holds <= ``limit`` chars.

    Cut messages are replaced, never edited: contexts handed to a policy earlier keep theirs.
    """
    total = sum(len(m.content) + sum(len(c.input) for c in m.tool_calls) for m in messages)
    for i in range(first, len(messages)):
        if total <= limit:
            return
        m = messages[i]
        if m.role != "tool" or m.content.startswith("[cut:"):
            continue
        note = f"[cut: an older tool result of {len(m.content)} chars]"
        total += len(note) - len(m.content)
        messages[i] = Message("tool", note)
