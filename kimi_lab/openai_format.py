"""kimi_lab chat messages <-> the OpenAI chat-completions wire format.

Shared by the served checkpoint (``kimi_lab.serving.serve``) and the client policy
(``kimi_lab.swarm.openai_policy``). A kimi_lab tool takes one text input; on the
wire it is a function with one string parameter ``input``. Tool results are
matched to calls by ``tool_call_id``; kimi_lab keeps them in call order.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kimi_lab.chat_format import ChatFormatError, Message, ToolCall, ToolSpec, image_marker


def tool_schema(tool: ToolSpec) -> dict[str, Any]:
    """A kimi_lab tool as a declared function: one string parameter ``input``, described by the
    tool's input format (``declared_tools`` reads it back unchanged)."""
    return {
        "type": "function",
        "function": {
            "name": tool.name,
            "description": tool.description,
            "parameters": {
                "type": "object",
                "properties": {"input": {"type": "string", "description": tool.input_format}},
                "required": ["input"],
            },
        },
    }


def input_format(parameters: Any) -> str:
    """What a declared function's call input is, in ``render_tools``' words: one string
    parameter is the input itself (its description, else its name); other parameters make a
    JSON object, sketched with their types (``{"q": STRING, "k": INTEGER}``); none: not said.
    ``chat_template`` writes the same in Jinja."""
    props = parameters.get("properties") if isinstance(parameters, dict) else None
    if not isinstance(props, dict) or not props:
        return ""
    if len(props) == 1:
        ((key, spec),) = props.items()
        if isinstance(spec, dict) and spec.get("type") == "string":
            return str(spec.get("description") or key)
    kinds = {k: v.get("type") if isinstance(v, dict) else None for k, v in props.items()}
    return (
        "{"
        + ", ".join(f'"{k}": {t.upper() if isinstance(t, str) else "VALUE"}' for k, t in kinds.items())
        + "}"
    )


def declared_tools(tools: Any) -> list[ToolSpec]:
    """A request's ``tools`` (OpenAI function declarations) as the chat format lists them."""
    if not tools:
        return []
    if not isinstance(tools, list):
        raise ChatFormatError("tools must be a list")
    out = []
    for t in tools:
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise ChatFormatError(f"bad tool {t!r:.80}")
        out.append(ToolSpec(fn["name"], str(fn.get("description") or ""), input_format(fn.get("parameters"))))
    return out


def _declared(tools: Any, name: str) -> dict[str, Any] | None:
    for t in tools or []:
        fn = t.get("function") if isinstance(t, dict) else None
        if isinstance(fn, dict) and fn.get("name") == name:
            return fn
    return None


def tool_call_arguments(call: ToolCall, tools: Any = ()) -> str:
    """A kimi_lab call's input as the JSON ``arguments`` of the tool the request declared.

    A tool with one string parameter gets the input as that parameter; a declared tool
    whose input is a JSON object (how a kimi_lab model writes several arguments) gets the
    object itself, as the model spelled it; anything else travels as ``{"input": ...}``
    (``tool_schema``'s shape). Characters are not \\u-escaped: an echoed call renders the
    same through ``arguments_text`` and the chat template (which cannot decode such escapes).
    """
    fn = _declared(tools, call.name)
    params = (fn or {}).get("parameters")
    props = params.get("properties") if isinstance(params, dict) else None
    if isinstance(props, dict) and len(props) == 1:
        ((key, spec),) = props.items()
        if isinstance(spec, dict) and spec.get("type") == "string":
            return json.dumps({key: call.input}, ensure_ascii=False)
    if fn is not None:
        try:
            parsed = json.loads(call.input)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict):
            return call.input
    return json.dumps({"input": call.input}, ensure_ascii=False)


def to_openai(messages: list[Message]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    pending: list[str] = []
    for turn, m in enumerate(messages):
        if m.role == "assistant":
            d: dict[str, Any] = {"role": "assistant", "content": m.content}
            if m.tool_calls:
                pending = [f"call_{turn}_{j}" for j in range(len(m.tool_calls))]
                d["tool_calls"] = [
                    {
                        "id": cid,
                        "type": "function",
                        "function": {
                            "name": c.name,
                            "arguments": json.dumps({"input": c.input}, ensure_ascii=False),
                        },
                    }
                    for cid, c in zip(pending, m.tool_calls, strict=True)
                ]
            out.append(d)
        elif m.role == "tool":
            # A result without a pending call (an error observation for a malformed
            # call) still needs an id for strict servers: give it a fresh one.
            cid = pending.pop(0) if pending else f"call_{turn}_orphan"
            out.append({"role": "tool", "tool_call_id": cid, "content": m.content})
        else:
            out.append({"role": m.role, "content": m.content})
    return out


IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")
MAX_IMAGE_PIXELS = 50_000_000  # a larger image is refused before it is decoded (a decompression bomb)


def image_from_url(url: Any) -> np.ndarray:
    """An ``image_url`` part's image as uint8 RGB (H, W, 3); only ``data:`` URLs (base64 PNG,
    JPEG or WebP) are taken: the server fetches nothing. Anything else is a ChatFormatError
    that says why."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(url, dict):  # {"url": ..., "detail": ...}
        url = url.get("url")
    if not isinstance(url, str) or not url:
        raise ChatFormatError("an image_url part needs a url")
    if url.startswith(("http://", "https://")):
        raise ChatFormatError(
            "remote image URLs are not fetched (the server has no network access): "
            "send the image inline as a data: URL (data:image/png;base64,...)"
        )
    header, comma, payload = url.partition(",")
    if not url.startswith("data:") or not comma or not header.endswith(";base64"):
        raise ChatFormatError(
            f"an image must be a base64 data: URL (data:image/png;base64,...), got {url!r:.40}"
        )
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ChatFormatError("the image's data: URL is not valid base64") from None
    try:
        with Image.open(io.BytesIO(raw)) as im:
            fmt, (w, h) = im.format, im.size
            if fmt in IMAGE_FORMATS and w * h <= MAX_IMAGE_PIXELS:
                return np.asarray(im.convert("RGB"))
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exn:
        raise ChatFormatError(
            f"the image does not decode as PNG, JPEG or WebP ({type(exn).__name__}: {exn})"
        ) from None
    if fmt not in IMAGE_FORMATS:
        raise ChatFormatError(f"image format {fmt} is not supported: send PNG, JPEG or WebP")
    raise ChatFormatError(f"the image is {w}x{h} pixels, more than the {MAX_IMAGE_PIXELS:,} taken")


def _content(content: Any, on_image: Callable[[Any], str] | None, role: str) -> tuple[str, list[str]]:
    """A wire message's content as kimi_lab text and image names: text parts in order, each
    image (named by ``on_image``, which decodes it) marked where it appears."""
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise ChatFormatError(
            f"message content must be text or a list of parts (got {type(content).__name__})"
        )
    text, names = "", []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            text += str(part.get("text", ""))
        elif kind == "image_url":
            if on_image is None or role not in ("user", "tool"):
                raise ChatFormatError(f"a {role} message cannot hold images here")
            try:
                name = on_image(part.get("image_url"))
            except ChatFormatError as exn:
                raise ChatFormatError(f"image {len(names) + 1}: {exn}") from None
            names.append(name)
            text += image_marker(name)
        else:
            raise ChatFormatError(f"content part type {kind!r} is not supported (text, image_url)")
    return text, names


# A string ``arguments`` of exactly this shape carries the input itself (``{"input": ...}``, as
# JSON spells it with or without the space); the chat template tests the same two prefixes.
_INPUT_ARGUMENTS = re.compile(r'\{"input": ?"(.*)"\}', re.DOTALL)


def arguments_text(args: Any) -> str:
    """A wire tool call's ``arguments`` as the text the model sees after the call's name; the
    exported chat template (``chat_template``) renders every case by the same rule:

    - an object (how transformers and vLLM hand arguments to a template): a one-key
      ``{"input": text}`` is the text, any other object its JSON (``tojson``'s spelling);
    - a string (the OpenAI wire form): blank is ``{}``; ``{"input": "..."}`` whose value is a
      valid JSON string is that string decoded; anything else is the string verbatim (Jinja
      has no JSON parser, so other JSON text is not re-spelled: what the client sent is what
      the model sees). The template cannot decode a ``\\uXXXX`` escape and refuses it.
    """
    if isinstance(args, str):
        if not args.strip():
            return "{}"
        shape = _INPUT_ARGUMENTS.fullmatch(args.strip())
        if shape is None:
            return args
        try:
            return json.loads(f'"{shape.group(1)}"', strict=False)
        except json.JSONDecodeError:
            return args
    if isinstance(args, dict) and set(args) == {"input"} and isinstance(args["input"], str):
        return args["input"]
    return json.dumps(args, ensure_ascii=False)


def call_from_openai(call: Any) -> ToolCall:
    """A wire tool call -> ToolCall, its input as ``arguments_text`` reads the arguments."""
    if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
        raise ChatFormatError(f"bad tool call {call!r:.80}")
    fn = call["function"]
    name = fn.get("name")
    if not isinstance(name, str) or not name:
        raise ChatFormatError(f"tool call without a function name: {call!r:.80}")
    return ToolCall(name, arguments_text(fn.get("arguments", "")))


def from_openai(items: Any, on_image: Callable[[Any], str] | None = None) -> list[Message]:
    """Wire messages -> kimi_lab messages. ``on_image`` takes each ``image_url`` part's value
    (decoding it, e.g. with ``image_from_url``) and names the image; without it images are refused."""
    if not isinstance(items, list) or not items:
        raise ChatFormatError("messages must be a non-empty list")
    out: list[Message] = []
    for d in items:
        if not isinstance(d, dict):
            raise ChatFormatError(f"a message must be an object (got {d!r:.60})")
        role = d.get("role")
        if role == "developer":
            role = "system"
        if role not in ("system", "user", "assistant", "tool"):
            raise ChatFormatError(f"unsupported role {role!r}")
        calls = [call_from_openai(c) for c in d.get("tool_calls") or []] if role == "assistant" else []
        try:
            text, images = _content(d.get("content"), on_image, role)
        except ChatFormatError as exn:
            raise ChatFormatError(f"message {len(out)}: {exn}") from None
        out.append(Message(role, text, calls, images))
    return out


# ------------------------------------------------------------------ responses
def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:16]}"


def wire_tool_call(call: ToolCall, tools: Any, index: int) -> dict[str, Any]:
    """One tool call of a response, with an id unique to it (clients echo it in the tool result)."""
    return {
        "id": f"call_{uuid.uuid4().hex[:12]}_{index}",
        "type": "function",
        "function": {"name": call.name, "arguments": tool_call_arguments(call, tools)},
    }


def completion(
    model: str, message: dict[str, Any], finish_reason: str, usage: dict[str, int]
) -> dict[str, Any]:
    """A whole ``chat.completion`` response."""
    return {
        "id": completion_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": usage,
    }


@dataclass
class ChunkStream:
    """The ``chat.completion.chunk`` objects of one streamed response (one id, one timestamp)."""

    model: str
    include_usage: bool = False
    id: str = field(default_factory=completion_id)
    created: int = field(default_factory=lambda: int(time.time()))

    def _base(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }

    def delta(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        c = self._base([{"index": 0, "delta": delta, "finish_reason": finish_reason}])
        if self.include_usage:  # with include_usage every chunk carries the field, null until the last
            c["usage"] = None
        return c

    def usage(self, usage: dict[str, int]) -> dict[str, Any]:
        """The last chunk when ``stream_options.include_usage`` is set: no choices, the token counts."""
        return {**self._base([]), "usage": usage}
