"""A served model as a swarm policy, over the OpenAI chat-completions API.

Point it at any OpenAI-compatible endpoint (``kimi-lab serve``, vLLM, SGLang, a
hosted API): ``OpenAIPolicy("http://127.0.0.1:8000/v1", model="...")``. Requests
use only the standard library and run in worker threads, so many agents can wait
on the server at once. The API key is read from ``OPENAI_API_KEY`` when not given.
"""

from __future__ import annotations

import asyncio
import json
import os
import urllib.error
import urllib.request
from typing import Any

from kimi_lab.chat_format import ChatFormatError, Message
from kimi_lab.openai_format import call_from_openai, to_openai, tool_schema
from kimi_lab.swarm.types import ToolSpec, Turn


class PolicyServerError(RuntimeError):
    """The server answered with an error or something that is not a chat completion."""


class OpenAIPolicy:
    def __init__(
        self,
        base_url: str,
        model: str = "",
        api_key: str | None = None,
        temperature: float = 1.0,
        max_tokens: int = 256,
        timeout_s: float = 120.0,
        seed: int | None = None,
    ) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY", "")
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.timeout_s = timeout_s
        self.seed = seed
        self.name = f"openai:{model or base_url}"

    def request_body(self, messages: list[Message], tools: list[ToolSpec]) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": to_openai(messages),
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        if tools:
            body["tools"] = [tool_schema(t) for t in tools]
        if self.seed is not None:
            body["seed"] = self.seed
        return body

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url, json.dumps(body).encode(), headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:
            detail = e.read()[:300].decode(errors="replace")
            raise PolicyServerError(f"{self.url}: HTTP {e.code}: {detail}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as e:
            raise PolicyServerError(f"{self.url}: {e}") from None
        except json.JSONDecodeError:
            raise PolicyServerError(f"{self.url}: the answer is not JSON") from None

    async def act(self, messages: list[Message], tools: list[ToolSpec], role: str) -> Turn:
        reply = await asyncio.to_thread(self._post, self.request_body(messages, tools))
        try:
            choice = reply["choices"][0]
            msg = choice["message"]
        except (KeyError, IndexError, TypeError):
            raise PolicyServerError(f"{self.url}: not a chat completion: {str(reply)[:200]}") from None
        calls, errors = [], []
        for c in msg.get("tool_calls") or []:
            try:
                calls.append(call_from_openai(c))
            except ChatFormatError as e:
                errors.append(f"malformed tool call: {e}")
        content = msg.get("content") or ""
        finished = choice.get("finish_reason") != "length"
        return Turn(Message("assistant", content, calls), finished=finished, errors=errors)
