"""Images in ``kimi-lab serve``: data: URLs to the vision tower of a -vl model, in place; the rest refused."""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from openai import BadRequestError

from kimi_lab.chat_format import ChatFormatError
from kimi_lab.openai_format import image_from_url
from tests.conftest import save_tiny_checkpoint
from tests.serving.test_serve import PYTHON_TOOL, _client, _streamed


def _data_url(fmt: str = "PNG", color: tuple[int, int, int] = (200, 30, 30), size: tuple = (40, 28)) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    mime = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp", "GIF": "gif"}[fmt]
    return f"data:image/{mime};base64," + base64.b64encode(buf.getvalue()).decode()


def _image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


@pytest.fixture(scope="module")
def vl_ckpt(tiny_tokenizer: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_checkpoint(
        tmp_path_factory.mktemp("vl_serve") / "tiny-vl.ckpt", tiny_tokenizer, model_name="tiny-vl"
    )


@pytest.fixture(scope="module")
def vl_loaded(vl_ckpt: Path) -> Any:
    from kimi_lab.decode.loading import load_model

    return load_model(vl_ckpt)


@pytest.fixture(scope="module")
def vl_server(vl_loaded: Any) -> Iterator[str]:
    """The real handler and service on 127.0.0.1, in this process (the model is loaded once)."""
    from kimi_lab.serving.serve import ChatService, make_handler

    cfg = vl_loaded.config
    service = ChatService(vl_loaded.model, vl_loaded.tokenizer, "kimi_lab/vl", 2048, cfg.data.vision)
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(service))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
        service.batcher.close()


def test_png_jpeg_and_webp_data_urls_decode_and_nothing_else_does() -> None:
    for fmt in ("PNG", "JPEG", "WEBP"):
        rgb = image_from_url(_data_url(fmt, size=(33, 21)))
        assert rgb.shape == (21, 33, 3) and rgb.dtype.name == "uint8"
        assert abs(int(rgb[10, 10, 0]) - 200) < 8  # the colour survived (JPEG and WebP are lossy)
    for url, reason in [
        ("https://example.com/cat.png", "send the image inline as a data: URL"),
        ("data:image/png;base64,bm90IGFuIGltYWdl", "does not decode"),
        ("data:image/png;base64,%%%", "not valid base64"),
        ("data:image/png,rawbytes", "base64 data: URL"),
        (_data_url("GIF"), "format GIF is not supported"),
        ({"detail": "high"}, "needs a url"),
    ]:
        with pytest.raises(ChatFormatError, match=reason):
            image_from_url(url)


def test_an_image_goes_to_the_vision_tower_where_it_appears(vl_loaded: Any) -> None:
    from kimi_lab.serving.serve import ChatService

    seen: list[int] = []
    hook = vl_loaded.model.vision_tower.register_forward_hook(
        lambda m, args, out: seen.append(int(args[0].shape[0]))
    )
    service = ChatService(vl_loaded.model, vl_loaded.tokenizer, "m", 2048, vl_loaded.config.data.vision)
    tok, enc = vl_loaded.tokenizer, service.enc
    parts = [{"type": "text", "text": "left"}, _image_part(_data_url()), {"type": "text", "text": "right"}]
    try:
        s = service.parse(
            {"messages": [{"role": "user", "content": parts}], "max_tokens": 3, "temperature": 0}
        )
        (block,) = s.blocks
        run = [enc.media_start, *[enc.image_pad] * block.n_tokens, enc.media_end]
        body = tok.encode("left") + run + tok.encode("right")
        assert s.prompt == [*enc.header("user"), *body, enc.ids["<|im_end|>"], *enc.header("assistant")]
        service.run(s)
    finally:
        hook.remove()
        service.batcher.close()
    assert seen == [block.pixel_values.shape[0]]  # its patches went through the tower, once


def test_images_over_the_openai_client_with_streaming_and_tools(vl_server: str) -> None:
    client = _client(vl_server)
    model = client.models.list().data[0].id
    text_only = [{"role": "user", "content": "what is this?"}]
    with_image = [
        {"role": "user", "content": [{"type": "text", "text": "what is this?"}, _image_part(_data_url())]}
    ]
    a = client.chat.completions.create(model=model, messages=text_only, temperature=0, max_tokens=4)
    b = client.chat.completions.create(model=model, messages=with_image, temperature=0, max_tokens=4)
    assert b.usage.prompt_tokens > a.usage.prompt_tokens + 2  # the image's placeholder run is in the prompt
    kw = {"temperature": 0, "max_tokens": 6, "tools": [PYTHON_TOOL]}
    whole = client.chat.completions.create(model=model, messages=with_image, **kw)
    text, _calls, finish, (usage, _) = _streamed(
        client, model, with_image, stream_options={"include_usage": True}, **kw
    )
    assert text == whole.choices[0].message.content and finish == whole.choices[0].finish_reason
    assert usage.prompt_tokens == whole.usage.prompt_tokens
    for url, reason in [
        ("http://example.com/a.png", "data: URL"),
        ("data:image/png;base64,aGVsbG8=", "does not decode"),
    ]:
        bad = [{"role": "user", "content": [_image_part(url)]}]
        with pytest.raises(BadRequestError, match=reason):
            client.chat.completions.create(model=model, messages=bad, max_tokens=2)
        with pytest.raises(BadRequestError, match=reason):  # a 400 before any event when streamed
            client.chat.completions.create(model=model, messages=bad, max_tokens=2, stream=True)
