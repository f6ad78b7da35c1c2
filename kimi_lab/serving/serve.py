"""``kimi-lab serve CKPT``: a kimi_lab checkpoint behind an OpenAI-compatible HTTP endpoint.

``POST /v1/chat/completions`` (messages, tools, temperature, top_p, max_tokens, seed, stop,
stream, stream_options.include_usage, and vLLM's ``ignore_eos``) and ``GET /v1/models``,
from the standard library's threaded HTTP server. With ``stream=true`` the answer comes
as server-sent events in the chat-completion chunk format, tokens as they are sampled
(``kimi_lab.serving.streaming``); streamed and non-streamed greedy answers are the same text.
Tool calls come back as OpenAI ``tool_calls`` in both modes. A request naming another
model than the served one (its id is in ``/v1/models``) is a 404 ``model_not_found``.

A ``-vl`` model takes ``image_url`` parts given as ``data:`` URLs (PNG, JPEG, WebP): each
goes to the vision tower at the place it has in the message. A remote URL, an image that
does not decode, or an image sent to a text-only model is a 400 that says why.

Concurrent requests decode together (``kimi_lab.serving.batching``): a request joins the running
batch at the next step and leaves when it is done, each with its own sampling parameters,
seed, stop strings and token budget; its greedy answer is the one it gets alone. A client that goes
away (mid-stream, or before a whole answer is ready) frees its row; the server carries
on. Bound to 127.0.0.1 by default: it has no authentication.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch

from kimi_lab.chat_format import ChatEncoder, ChatFormatError, Message, ParsedAssistant, validate, with_tools
from kimi_lab.config.schema import VisionDataConfig
from kimi_lab.data.vision import VisionBlock, image_block
from kimi_lab.decode.generation import Prompt
from kimi_lab.errors import KimiLabError
from kimi_lab.openai_format import (
    ChunkStream,
    completion,
    declared_tools,
    from_openai,
    image_from_url,
    wire_tool_call,
)
from kimi_lab.serving.batching import Batcher, SamplingParams
from kimi_lab.serving.streaming import AssistantStream, StreamEvents

MAX_BODY_BYTES = 32 << 20  # room for a few inline (base64) images
CLIENT_TIMEOUT_S = 60  # a client that stops reading for this long loses its stream (and the queue moves on)


class BadRequest(ValueError):
    pass


class ClientGone(Exception):
    pass


@dataclass
class Sampling:
    """One request, checked: the prompt tokens and how to sample the answer."""

    messages: list[Message]
    tools: list[dict[str, Any]]
    prompt: list[int]
    blocks: list[VisionBlock]  # the images, in the order of their placeholder runs in the prompt
    stop_ids: tuple[int, ...]
    stop: tuple[str, ...]  # the request's stop strings
    max_new_tokens: int
    temperature: float
    top_p: float | None
    seed: int | None
    stream: bool
    include_usage: bool


@dataclass
class Answer:
    finish_reason: str  # stop | tool_calls | length
    parsed: ParsedAssistant
    content: str  # the parsed content, plus any malformed-call errors for the caller to report
    usage: dict[str, int]


class ChatService:
    """Turns a chat-completions request into one sampled assistant turn.

    ``vision`` is the image preprocessing of a ``-vl`` model (None: text only). All
    requests share one ``Batcher``, which owns the model."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        name: str,
        max_seq_len: int,
        vision: VisionDataConfig | None = None,
        max_batch: int = 16,
    ) -> None:
        self.tok = tokenizer
        self.enc = ChatEncoder(tokenizer)
        self.name = name
        self.max_seq_len = max_seq_len
        self.vision = vision
        self.batcher = Batcher(model, tokenizer.pad_id, self.enc.banned_ids, max_batch=max_batch)

    # --------------------------------------------------------------- requests
    def parse(self, req: Any) -> Sampling:
        if not isinstance(req, dict):
            raise BadRequest("the request body must be a JSON object")
        images: dict[str, VisionBlock] = {}

        def on_image(url: Any) -> str:
            if self.vision is None:
                raise ChatFormatError(
                    f"model {self.name} has no vision tower and cannot take images (serve a -vl checkpoint)"
                )
            name = f"image_{len(images)}"
            images[name] = image_block(image_from_url(url), self.vision)
            return name

        try:
            messages = from_openai(req.get("messages"), on_image)
            validate(messages, require_assistant=False)
        except ChatFormatError as e:
            raise BadRequest(str(e)) from None
        tools = req.get("tools") or []
        try:
            messages = with_tools(messages, declared_tools(tools))
        except ChatFormatError as e:
            raise BadRequest(str(e)) from None
        temperature = req.get("temperature", 1.0)
        top_p = req.get("top_p")
        max_tokens = req.get("max_tokens", req.get("max_completion_tokens"))
        max_tokens = 256 if max_tokens is None else max_tokens
        if (
            isinstance(temperature, bool)
            or not isinstance(temperature, int | float)
            or not 0 <= temperature <= 2
        ):
            raise BadRequest("temperature must be a number in [0, 2]")
        if top_p is not None and (
            isinstance(top_p, bool) or not isinstance(top_p, int | float) or not 0 < top_p <= 1
        ):
            raise BadRequest("top_p must be a number in (0, 1]")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise BadRequest("max_tokens must be a positive integer")
        if req.get("n", 1) != 1:
            raise BadRequest("n must be 1 (one choice per request)")
        stop = req.get("stop")
        stop = [stop] if isinstance(stop, str) else (stop or [])
        if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(x, str) for x in stop):
            raise BadRequest("stop must be a string or a list of at most 4 strings")
        stream_options = req.get("stream_options") or {}
        if not isinstance(stream_options, dict):
            raise BadRequest("stream_options must be an object")
        encoded = self.enc.encode(
            messages,
            (lambda n: images[n].n_tokens) if self.vision is not None else None,
            add_generation_prompt=True,
        )
        prompt = encoded.tokens
        room = self.max_seq_len - len(prompt)
        if room <= 0:
            raise BadRequest(f"the prompt is {len(prompt)} tokens; the model's context is {self.max_seq_len}")
        seed = req.get("seed")
        return Sampling(
            messages=messages,
            tools=tools,
            prompt=prompt,
            blocks=[images[name] for _, name in encoded.media],
            stop_ids=() if req.get("ignore_eos") is True else self.enc.stop_ids,
            stop=tuple(stop),
            max_new_tokens=min(max_tokens, room),
            temperature=float(temperature),
            top_p=None if top_p is None else float(top_p),
            seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
            stream=bool(req.get("stream")),
            include_usage=bool(stream_options.get("include_usage")),
        )

    # ------------------------------------------------------------- sampling
    def run(
        self,
        s: Sampling,
        on_events: Callable[[StreamEvents], None] | None = None,
        client_left: Callable[[], bool] | None = None,
    ) -> Answer:
        """Sample the turn in the shared batch; ``on_events`` sees the deltas as they come and
        stops the generation by raising ``ClientGone``, as does ``client_left()`` turning True."""
        stream = AssistantStream(self.tok, s.stop)
        stops = set(s.stop_ids)
        ticket = self.batcher.submit(
            Prompt(s.prompt, s.blocks),
            SamplingParams(s.max_new_tokens, s.stop_ids, s.temperature, s.top_p, seed=s.seed),
        )
        used = 0  # tokens that count: up to a stop token or the token that completed a stop string
        try:
            for t, _ in ticket.tokens():
                if stream.stopped:
                    continue  # sampled before the engine saw the cancel: not part of the answer
                used += 1
                if t in stops:
                    continue
                events = stream.push(t)
                if stream.stopped:
                    ticket.cancel()  # a stop string: the row leaves the batch at the next step
                if on_events is not None:
                    on_events(events)
                elif client_left is not None and client_left():
                    raise ClientGone()
        except ClientGone:
            ticket.cancel()  # its row leaves the batch at the next step
            raise
        g = ticket.result
        assert g is not None
        finished = g.finished or stream.stopped
        last, parsed = stream.finish(finished)
        if on_events is not None:
            on_events(last)
        content = parsed.message.content
        if parsed.errors:  # keep what the model wrote: the caller's runtime reports it back
            extra = ("\n" if content else "") + "\n".join(parsed.errors)
            content += extra
            if on_events is not None:
                on_events(StreamEvents(content=extra))
        finish = "length" if not finished else ("tool_calls" if parsed.message.tool_calls else "stop")
        usage = {
            "prompt_tokens": len(s.prompt),
            "completion_tokens": used,
            "total_tokens": len(s.prompt) + used,
        }
        return Answer(finish, parsed, content, usage)

    def complete(self, req: Any, client_left: Callable[[], bool] | None = None) -> dict[str, Any]:
        """A chat-completions request answered at once (``stream`` is ignored here)."""
        s = self.parse(req)
        a = self.run(s, client_left=client_left)
        msg: dict[str, Any] = {"role": "assistant", "content": a.content}
        if a.parsed.message.tool_calls:
            msg["tool_calls"] = [
                wire_tool_call(c, s.tools, j) for j, c in enumerate(a.parsed.message.tool_calls)
            ]
        return completion(self.name, msg, a.finish_reason, a.usage)

    def stream_chunks(self, s: Sampling, write: Callable[[dict[str, Any]], None]) -> None:
        """A ``stream=true`` request: every chunk goes to ``write`` as it is ready."""
        chunks = ChunkStream(self.name, s.include_usage)
        n_calls = 0

        def on_events(ev: StreamEvents) -> None:
            nonlocal n_calls
            if ev.content:
                write(chunks.delta({"content": ev.content}))
            for call in ev.tool_calls:
                write(
                    chunks.delta(
                        {"tool_calls": [{"index": n_calls, **wire_tool_call(call, s.tools, n_calls)}]}
                    )
                )
                n_calls += 1

        write(chunks.delta({"role": "assistant", "content": ""}))
        a = self.run(s, on_events)
        write(chunks.delta({}, a.finish_reason))
        if s.include_usage:
            write(chunks.usage(a.usage))


def make_handler(service: ChatService) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = CLIENT_TIMEOUT_S

        def _send(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(
            self, status: int, message: str, code: str | None = None, param: str | None = None
        ) -> None:
            error = {"message": message, "type": "invalid_request_error", "param": param, "code": code}
            self._send(status, {"error": error})

        def do_GET(self) -> None:
            if self.path.rstrip("/") == "/v1/models":
                self._send(
                    200,
                    {
                        "object": "list",
                        "data": [
                            {"id": service.name, "object": "model", "created": 0, "owned_by": "kimi_lab"}
                        ],
                    },
                )
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
                self._error(
                    400 if n <= 0 else 413, f"a JSON body of at most {MAX_BODY_BYTES >> 20} MiB is required"
                )
                return
            try:
                req = json.loads(self.rfile.read(n))
            except (json.JSONDecodeError, UnicodeDecodeError):
                self._error(400, "the body is not valid JSON")
                return
            model = req.get("model") if isinstance(req, dict) else None
            if model and model != service.name:  # never answer for another model with this one
                message = f"The model `{model}` does not exist; this server serves `{service.name}` (GET /v1/models)"
                self._error(404, message, code="model_not_found", param="model")
                return
            try:
                if isinstance(req, dict) and req.get("stream"):
                    self._stream(req)
                else:
                    self._send(200, service.complete(req, lambda: _client_left(self.connection)))
            except BadRequest as e:
                self._error(400, str(e))
            except ClientGone:
                self.close_connection = True
            except Exception as e:  # the server stays up for the next request
                if not getattr(self, "_streaming", False):
                    self._error(500, f"{type(e).__name__}: {e}")
                else:  # headers are out: end the stream with an error event the client can read
                    self.close_connection = True
                    with contextlib.suppress(ClientGone):
                        self._event(
                            {"error": {"message": f"{type(e).__name__}: {e}", "type": "server_error"}}
                        )

        def _event(self, data: dict[str, Any] | None) -> None:
            line = b"data: [DONE]\n\n" if data is None else b"data: " + json.dumps(data).encode() + b"\n\n"
            try:
                self.wfile.write(line)
                self.wfile.flush()
            except OSError:  # broken pipe, reset, a timed-out client that stopped reading
                raise ClientGone() from None

        def _stream(self, req: dict[str, Any]) -> None:
            sampling = service.parse(req)  # a bad request is a 400 before any event is sent
            self._streaming = True
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")  # the stream ends when the connection does
            self.end_headers()
            self.close_connection = True
            service.stream_chunks(sampling, self._event)
            self._event(None)

        def log_message(self, fmt: str, *args: Any) -> None:
            pass  # quiet: one line per request would drown the swarm's own output

    return Handler


def _client_left(conn: socket.socket) -> bool:
    """Whether the client of a request still being answered closed its connection (EOF)."""
    try:
        readable, _, _ = select.select([conn], [], [], 0)
        return bool(readable) and conn.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


def make_server(
    ckpt_path: str, host: str = "127.0.0.1", port: int = 8000, max_batch: int = 16
) -> ThreadingHTTPServer:
    from pathlib import Path

    from kimi_lab.decode.loading import load_model

    loaded = load_model(ckpt_path)
    cfg = loaded.config
    name = f"kimi_lab/{cfg.experiment}/{Path(ckpt_path).stem}"
    vision = cfg.data.vision if cfg.model.vision is not None else None
    service = ChatService(
        loaded.model, loaded.tokenizer, name, cfg.model.max_seq_len, vision, max_batch=max_batch
    )
    try:
        server = ThreadingHTTPServer((host, port), make_handler(service))
    except OSError as exn:  # taken while the model loaded (the CLI checked it first)
        raise KimiLabError(f"port {port} on {host}: {exn.strerror}: choose another with --port N") from None
    server.daemon_threads = True
    return server


def serve(ckpt_path: str, host: str = "127.0.0.1", port: int = 8000, max_batch: int = 16) -> None:
    server = make_server(ckpt_path, host, port, max_batch)
    h, p = server.server_address[:2]
    print(f"serving {ckpt_path} at http://{h}:{p}/v1 (OpenAI chat completions); Ctrl-C stops", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
