"""`kimi-lab serve` driven by the official `openai` client over real HTTP on 127.0.0.1:
model list, plain and tool-calling completions, streaming, concurrent clients, disconnects."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import BadRequestError, NotFoundError, OpenAI

from kimi_lab.openai_format import tool_call_arguments
from tests.conftest import REPO

PYTHON_TOOL = {
    "type": "function",
    "function": {
        "name": "python",
        "description": "run Python code",
        "parameters": {"type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"]},
    },
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(ckpt: Path, tmp: Path) -> Iterator[str]:
    """``kimi-lab serve CKPT`` in its own process; yields the base URL, stops it afterwards."""
    port = _free_port()
    log = (tmp / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "kimi_lab.cli", "serve", str(ckpt), "--port", str(port)],
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 180
    while True:
        assert proc.poll() is None, (tmp / "serve.log").read_text()[-3000:]
        assert time.time() < deadline, "the server did not come up"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                break
        except OSError:
            time.sleep(0.3)
    try:
        yield base
    finally:
        assert proc.poll() is None, "the server died during the tests"
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def server(chat_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from _serve(chat_ckpt, tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def parrot_server(parrot_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from _serve(parrot_ckpt, tmp_path_factory.mktemp("serve_parrot"))


def _client(base: str) -> OpenAI:
    return OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=300)


def _ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _streamed(
    client: OpenAI, model: str, messages: list, **kw: object
) -> tuple[str, list, str | None, object]:
    """(text, tool-call deltas, finish reason, usage) of a streamed completion."""
    text, calls, finish, usage, n_content = "", [], None, None, 0
    stream = client.chat.completions.create(model=model, messages=messages, stream=True, **kw)
    for i, chunk in enumerate(stream):
        if chunk.usage is not None:
            usage = chunk.usage
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        if i == 0:
            assert choice.delta.role == "assistant"
        if choice.delta.content:
            text += choice.delta.content
            n_content += 1
        calls += choice.delta.tool_calls or []
        finish = choice.finish_reason or finish
    return text, calls, finish, (usage, n_content)


def test_models_list_and_a_plain_completion(server: str) -> None:
    client = _client(server)
    models = client.models.list().data
    assert len(models) == 1 and models[0].id.startswith("kimi_lab/")
    r = client.chat.completions.create(
        model=models[0].id, messages=_ask("hello"), temperature=0, max_tokens=12, seed=0
    )
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert isinstance(r.choices[0].message.content, str) and r.choices[0].finish_reason in ("stop", "length")
    u = r.usage
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens and 1 <= u.completion_tokens <= 12


def test_streamed_text_equals_the_non_streamed_text(server: str) -> None:
    client = _client(server)
    model = client.models.list().data[0].id
    for prompt in ("hello", "Write a haiku about experts."):
        whole = client.chat.completions.create(
            model=model, messages=_ask(prompt), temperature=0, max_tokens=24
        )
        text, calls, finish, (usage, n_content) = _streamed(
            client,
            model,
            _ask(prompt),
            temperature=0,
            max_tokens=24,
            stream_options={"include_usage": True},
        )
        assert text == whole.choices[0].message.content and calls == []
        assert finish == whole.choices[0].finish_reason
        assert usage is not None and usage.model_dump() == whole.usage.model_dump()
        assert n_content > 1  # pieces as they were sampled, not one block at the end


def test_the_raw_stream_is_server_sent_events_ending_in_done(server: str) -> None:
    body = json.dumps({"messages": _ask("hi"), "max_tokens": 5, "temperature": 0, "stream": True}).encode()
    req = urllib.request.Request(f"{server}/chat/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        assert r.headers["Content-Type"] == "text/event-stream"
        raw = r.read().decode()
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1 and chunks[-1]["choices"][0]["finish_reason"] is not None
    assert "usage" not in chunks[0]  # only with stream_options.include_usage


def test_tool_calls_come_back_as_openai_tool_calls_in_both_modes(parrot_server: str) -> None:
    client = _client(parrot_server)
    model = client.models.list().data[0].id
    r = client.chat.completions.create(
        model=model, messages=_ask("what is 1/0?"), tools=[PYTHON_TOOL], temperature=0
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == ""
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "python" and call.id.startswith("call_")
    assert json.loads(call.function.arguments) == {"code": "1/0"}  # the declared parameter
    text, calls, finish, _ = _streamed(
        client, model, _ask("what is 1/0?"), tools=[PYTHON_TOOL], temperature=0
    )
    assert text == "" and finish == "tool_calls" and len(calls) == 1
    assert calls[0].index == 0 and calls[0].function.name == "python"
    assert json.loads(calls[0].function.arguments) == {"code": "1/0"}
    # the caller runs the tool and sends the result back: the conversation goes on
    follow = [
        *_ask("what is 1/0?"),
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "ZeroDivisionError: division by zero"},
    ]
    again = client.chat.completions.create(model=model, messages=follow, tools=[PYTHON_TOOL], temperature=0)
    assert again.choices[0].message.tool_calls[0].function.name == "python"


def test_tool_call_arguments_follow_the_declared_schema() -> None:
    from kimi_lab.chat_format import ToolCall

    several = {
        "type": "function",
        "function": {
            "name": "search",
            "parameters": {
                "type": "object",
                "properties": {"q": {"type": "string"}, "k": {"type": "integer"}},
            },
        },
    }
    assert json.loads(tool_call_arguments(ToolCall("python", "1/0"), [PYTHON_TOOL])) == {"code": "1/0"}
    assert json.loads(tool_call_arguments(ToolCall("search", '{"q": "x", "k": 2}'), [several])) == {
        "q": "x",
        "k": 2,
    }
    assert json.loads(tool_call_arguments(ToolCall("search", "free text"), [several])) == {
        "input": "free text"
    }
    assert json.loads(tool_call_arguments(ToolCall("undeclared", '{"a": 1}'))) == {"input": '{"a": 1}'}


def test_concurrent_clients_are_never_mixed_up(server: str) -> None:
    client = _client(server)
    model = client.models.list().data[0].id
    prompts = ["alpha", "beta beta", "gamma gamma gamma", "delta"]
    alone = {
        p: client.chat.completions.create(model=model, messages=_ask(p), temperature=0, max_tokens=10)
        .choices[0]
        .message.content
        for p in prompts
    }
    assert len(set(alone.values())) > 1  # different prompts, different answers: a mix-up would show
    got: dict[tuple[str, bool], str] = {}

    def one(prompt: str, stream: bool) -> None:
        c = _client(server)
        if stream:
            got[prompt, stream] = _streamed(c, model, _ask(prompt), temperature=0, max_tokens=10)[0]
        else:
            r = c.chat.completions.create(model=model, messages=_ask(prompt), temperature=0, max_tokens=10)
            got[prompt, stream] = r.choices[0].message.content

    threads = [threading.Thread(target=one, args=(p, s)) for p in prompts for s in (False, True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert got == {(p, s): alone[p] for p in prompts for s in (False, True)}


def test_a_client_leaving_mid_stream_does_not_stop_the_server(server: str) -> None:
    host, port = server.removeprefix("http://").removesuffix("/v1").split(":")
    body = json.dumps({"messages": _ask("go on"), "max_tokens": 400, "stream": True}).encode()
    for _ in range(2):
        with socket.create_connection((host, int(port)), timeout=60) as s:
            s.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            first = s.recv(4096)
            assert first.startswith(b"HTTP/1.1 200") and b"data: " in first + s.recv(4096)
        # the socket is closed after the first events: the server must notice and go on
    client = _client(server)
    r = client.chat.completions.create(
        model=client.models.list().data[0].id, messages=_ask("still there?"), max_tokens=4
    )
    assert r.choices[0].message.role == "assistant"


def test_bad_requests_are_400s_before_any_event(server: str) -> None:
    client = _client(server)
    model = client.models.list().data[0].id
    with pytest.raises(BadRequestError, match="temperature"):
        client.chat.completions.create(model=model, messages=_ask("x"), stream=True, temperature=5)
    with pytest.raises(BadRequestError, match="top_p"):
        client.chat.completions.create(model=model, messages=_ask("x"), top_p=0)
    with pytest.raises(BadRequestError, match="n must be 1"):
        client.chat.completions.create(model=model, messages=_ask("x"), n=2)
    png = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": png}}]}]
    with pytest.raises(BadRequestError, match="no vision tower"):  # a text-only model
        client.chat.completions.create(model=model, messages=image)


def test_a_request_for_another_model_is_a_404_in_openais_shape(server: str) -> None:
    client = _client(server)
    served = client.models.list().data[0].id
    for stream in (False, True):
        with pytest.raises(NotFoundError) as err:
            client.chat.completions.create(model="gpt-4", messages=_ask("x"), max_tokens=2, stream=stream)
        assert err.value.status_code == 404
        assert err.value.body == {
            "message": f"The model `gpt-4` does not exist; this server serves `{served}` (GET /v1/models)",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }


def test_a_busy_port_is_refused_before_the_model_loads(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # no such checkpoint: the port is checked first, so that is not what it says
        res = subprocess.run(
            [sys.executable, "-m", "kimi_lab.cli", "serve", str(tmp_path / "none.ckpt"), "--port", str(port)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr == f"error: port {port} on 127.0.0.1 is already in use: choose another with --port N\n"


def test_a_gone_client_stops_its_generation_and_frees_the_model(chat_ckpt: Path) -> None:
    from kimi_lab.decode.loading import load_model
    from kimi_lab.serving.serve import ChatService, ClientGone

    loaded = load_model(chat_ckpt)
    service = ChatService(loaded.model, loaded.tokenizer, "m", 2048)
    s = service.parse({"messages": _ask("go on"), "max_tokens": 200, "temperature": 0, "stream": True})
    seen = []

    def leave_after_two(ev: object) -> None:
        seen.append(ev)
        if len(seen) == 2:
            raise ClientGone()

    with pytest.raises(ClientGone):
        service.run(s, leave_after_two)
    assert len(seen) == 2  # no token was sampled for it after it left
    deadline = time.time() + 60
    while service.batcher.running and time.time() < deadline:  # its row leaves at the next step
        time.sleep(0.01)
    assert service.batcher.running == 0
    assert (
        service.run(service.parse({"messages": _ask("next"), "max_tokens": 3})).usage["completion_tokens"]
        == 3
    )


def test_stop_strings_end_the_answer_in_both_modes(server: str) -> None:
    client = _client(server)
    model = client.models.list().data[0].id
    whole = client.chat.completions.create(model=model, messages=_ask("hello"), temperature=0, max_tokens=24)
    text = whole.choices[0].message.content
    assert len(text) > 6
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    cut = client.chat.completions.create(
        model=model, messages=_ask("hello"), temperature=0, max_tokens=24, stop=[stop, "never"]
    )
    assert cut.choices[0].message.content == text[: text.find(stop)].strip()
    assert (
        cut.choices[0].finish_reason == "stop" and cut.usage.completion_tokens < whole.usage.completion_tokens
    )
    streamed, _, finish, (usage, _) = _streamed(
        client,
        model,
        _ask("hello"),
        temperature=0,
        max_tokens=24,
        stop=stop,
        stream_options={"include_usage": True},
    )
    assert (streamed, finish) == (cut.choices[0].message.content, "stop")
    assert usage.model_dump() == cut.usage.model_dump()
    with pytest.raises(BadRequestError, match="stop must be"):
        client.chat.completions.create(model=model, messages=_ask("x"), stop=["a", "b", "c", "d", "e"])


def test_a_closed_connection_is_noticed_between_tokens() -> None:
    from kimi_lab.serving.serve import _client_left

    a, b = socket.socketpair()
    with a:
        assert not _client_left(a)
        b.sendall(b"GET /next HTTP/1.1\r\n")  # a pipelined request is not a goodbye
        assert not _client_left(a)
        b.close()
        a.recv(64)
        assert _client_left(a)
