"""``kimi-lab serve CKPT``: a kimi_lab checkpoint behind an OpenAI-compatible HTTP endpoint.

``POST /v1/chat/completions`` (messages, tools, temperature, max_tokens, seed) and
``GET /v1/models``, from the standard library's threaded HTTP server. Generation
runs one request at a time (the model is not re-entrant); the swarm's client policy
(``kimi_lab.swarm.openai_policy``) or any OpenAI client can drive it. Bound to
127.0.0.1 by default: it has no authentication.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch

from kimi_lab.chat import ChatEncoder, ChatFormatError, Message, parse_assistant, validate
from kimi_lab.generation import Prompt, generate
from kimi_lab.openai_format import from_openai, to_openai

MAX_BODY_BYTES = 4 << 20


class BadRequest(ValueError):
    pass


class ChatService:
    """Turns a chat-completions request into one sampled assistant turn."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, name: str, max_seq_len: int) -> None:
        self.model = model
        self.tok = tokenizer
        self.enc = ChatEncoder(tokenizer)
        self.name = name
        self.max_seq_len = max_seq_len
        self.lock = threading.Lock()

    def complete(self, req: Any) -> dict[str, Any]:
        if not isinstance(req, dict):
            raise BadRequest("the request body must be a JSON object")
        try:
            messages = from_openai(req.get("messages"))
            validate(messages, require_assistant=False)
        except ChatFormatError as e:
            raise BadRequest(str(e)) from None
        messages = self._with_tools(messages, req.get("tools"))
        temperature = req.get("temperature", 1.0)
        max_tokens = req.get("max_tokens", req.get("max_completion_tokens"))
        max_tokens = 256 if max_tokens is None else max_tokens
        if not isinstance(temperature, int | float) or not 0 <= temperature <= 2:
            raise BadRequest("temperature must be a number in [0, 2]")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise BadRequest("max_tokens must be a positive integer")
        prompt = self.enc.encode(messages, add_generation_prompt=True).tokens
        room = self.max_seq_len - len(prompt)
        if room <= 0:
            raise BadRequest(f"the prompt is {len(prompt)} tokens; the model's context is {self.max_seq_len}")
        seed = req.get("seed")
        gen = torch.Generator().manual_seed(int(seed)) if isinstance(seed, int) else None
        with self.lock:
            (g,) = generate(
                self.model,
                [Prompt(prompt)],
                min(max_tokens, room),
                self.enc.stop_ids,
                self.tok.pad_id,
                temperature=float(temperature),
                generator=gen,
                banned_ids=self.enc.banned_ids,
            )
        parsed = parse_assistant(self.tok.decode(g.tokens), g.finished)
        msg = to_openai([*messages, parsed.message])[-1]
        content = parsed.message.content
        if parsed.errors:  # keep what the model wrote: the caller's runtime reports it back
            content = (content + "\n" if content else "") + "\n".join(parsed.errors)
        msg["content"] = content
        finish = "length" if not g.finished else ("tool_calls" if parsed.message.tool_calls else "stop")
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:16]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.name,
            "choices": [{"index": 0, "message": msg, "finish_reason": finish}],
            "usage": {
                "prompt_tokens": len(prompt),
                "completion_tokens": len(g.tokens),
                "total_tokens": len(prompt) + len(g.tokens),
            },
        }

    @staticmethod
    def _with_tools(messages: list[Message], tools: Any) -> list[Message]:
        """Tools described in the request go into the system message, the way kimi_lab prompts them."""
        if not tools:
            return messages
        if not isinstance(tools, list):
            raise BadRequest("tools must be a list")
        lines = []
        for t in tools:
            fn = t.get("function") if isinstance(t, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                raise BadRequest(f"bad tool {t!r:.80}")
            lines.append(f"- {fn['name']}: {fn.get('description', '')}")
        block = "Tools:\n" + "\n".join(lines)
        if any(block in m.content for m in messages if m.role == "system"):
            return messages  # the caller already described them
        if messages[0].role == "system":
            first = Message("system", messages[0].content + "\n\n" + block)
            return [first, *messages[1:]]
        return [Message("system", block), *messages]


def make_handler(service: ChatService) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _send(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, code: int, message: str) -> None:
            self._send(code, {"error": {"message": message, "type": "invalid_request_error", "code": code}})

        def do_GET(self) -> None:
            if self.path.rstrip("/") == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": service.name, "object": "model"}]})
            elif self.path.rstrip("/") in ("", "/health"):
                self._send(200, {"status": "ok", "model": service.name})
            else:
                self._error(404, f"no route {self.path}")

        def do_POST(self) -> None:
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._error(404, f"no route {self.path}")
                return
            try:
                n = int(self.headers.get("Content-Length", "0"))
            except ValueError:
                n = -1
            if not 0 < n <= MAX_BODY_BYTES:
                self._error(400 if n <= 0 else 413, "a JSON body of at most 4 MiB is required")
                return
            try:
                req = json.loads(self.rfile.read(n))
            except (json.JSONDecodeError, UnicodeDecodeError):
                self._error(400, "the body is not valid JSON")
                return
            if isinstance(req, dict) and req.get("stream"):
                self._error(400, "stream=true is not supported")
                return
            try:
                self._send(200, service.complete(req))
            except BadRequest as e:
                self._error(400, str(e))
            except Exception as e:  # the server stays up for the next request
                self._error(500, f"{type(e).__name__}: {e}")

        def log_message(self, fmt: str, *args: Any) -> None:
            pass  # quiet: one line per request would drown the swarm's own output

    return Handler


def make_server(ckpt_path: str, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    from pathlib import Path

    from kimi_lab.swarm.checkpoint_policy import load_checkpoint_policy

    cfg, policy = load_checkpoint_policy(ckpt_path)
    name = f"kimi_lab/{cfg.experiment}/{Path(ckpt_path).stem}"
    service = ChatService(policy.model, policy.tok, name, cfg.model.max_seq_len)
    server = ThreadingHTTPServer((host, port), make_handler(service))
    server.daemon_threads = True
    return server


def serve(ckpt_path: str, host: str = "127.0.0.1", port: int = 8000) -> None:
    server = make_server(ckpt_path, host, port)
    h, p = server.server_address[:2]
    print(f"serving {ckpt_path} at http://{h}:{p}/v1 (OpenAI chat completions); Ctrl-C stops", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
