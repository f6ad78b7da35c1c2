"""`kimi-lab generate` and `kimi-lab chat`: tokens as they are sampled, the chat format, tool calls in
the sandbox, images for a -vl model, and any checkpoint the loader reads (import-hf's included)."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kimi_lab.chat_format import ChatEncoder
from kimi_lab.decode.generation import DecodeOptions, Prompt, generate
from kimi_lab.decode.loading import load_model
from kimi_lab.errors import ConfigError
from kimi_lab.serving.chat_session import ChatSession, Sampler, chat_loop, generate_text, read_image
from tests.conftest import REPO, run_cli, save_tiny_checkpoint


def _greedy_text(ckpt: Path, prompt: str, n: int) -> str:
    loaded = load_model(ckpt)
    enc = ChatEncoder(loaded.tokenizer)
    ids = loaded.tokenizer.encode(prompt)
    (g,) = generate(loaded.model, [Prompt(ids)], DecodeOptions(n, enc.stop_ids, loaded.tokenizer.pad_id, 0.0))
    tokens = g.tokens[:-1] if g.finished else g.tokens
    return loaded.tokenizer.decode(tokens)


class Recorder(io.StringIO):
    """Notes how many forward passes the model had made at each write."""

    def __init__(self, forwards: list[int]) -> None:
        super().__init__()
        self.forwards = forwards
        self.writes: list[tuple[int, str]] = []

    def write(self, s: str) -> int:
        if s:
            self.writes.append((self.forwards[0], s))
        return super().write(s)


def test_generate_writes_each_token_as_it_is_sampled(chat_ckpt: Path) -> None:
    loaded = load_model(chat_ckpt)
    forwards = [0]
    loaded.model.language_model.register_forward_hook(lambda *_: forwards.__setitem__(0, forwards[0] + 1))
    out = Recorder(forwards)
    stats = generate_text(loaded, "The expert", [], Sampler(max_new_tokens=12, temperature=0), out)
    assert out.getvalue() == _greedy_text(chat_ckpt, "The expert", 12) + "\n"
    during = {f for f, _ in out.writes if f < forwards[0]}
    assert len(during) >= 3  # text came out between forward passes, not all at the end
    assert 1 <= stats["new_tokens"] <= 12


def test_sampling_options_are_checked_and_seeded(chat_ckpt: Path) -> None:
    loaded = load_model(chat_ckpt)
    for bad in (Sampler(top_p=0.0), Sampler(top_p=1.5), Sampler(temperature=-1), Sampler(max_new_tokens=0)):
        with pytest.raises(ConfigError):
            generate_text(loaded, "x", [], bad, io.StringIO())
    runs = []
    for _ in range(2):
        out = io.StringIO()
        generate_text(loaded, "x", [], Sampler(max_new_tokens=10, temperature=1.0, top_p=0.9, seed=3), out)
        runs.append(out.getvalue())
    assert runs[0] == runs[1]
    with pytest.raises(ConfigError, match="no vision tower"):
        generate_text(loaded, "x", [np.zeros((28, 28, 3), np.uint8)], Sampler(), io.StringIO())


def test_generate_command_streams_to_stdout(chat_ckpt: Path, tmp_path: Path) -> None:
    res = run_cli(
        "generate", str(chat_ckpt), "--prompt", "The expert", "--temperature", "0", "--max-new-tokens", "12",
        cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout == _greedy_text(chat_ckpt, "The expert", 12) + "\n"
    # nothing but the text and, at the end, its speed: diagnostics wait for --verbose
    assert res.stderr.strip().splitlines() == [res.stderr.strip().splitlines()[-1]]
    assert "tokens/s" in res.stderr.strip().splitlines()[-1]
    res = run_cli(
        "generate", str(chat_ckpt), "--prompt", "The expert", "--temperature", "0", "--max-new-tokens", "1",
        "--verbose", cwd=tmp_path,
    )  # fmt: skip
    assert "MoE experts backend: torch" in res.stderr
    res = run_cli(
        "generate", str(chat_ckpt), "--prompt", "x", "--image", str(tmp_path / "none.png"), cwd=tmp_path
    )
    assert res.returncode == 2 and res.stderr.strip().splitlines()[-1].startswith("error: ")
    res = run_cli("generate", str(tmp_path / "missing.ckpt"), "--prompt", "x", cwd=tmp_path)
    assert res.returncode == 2 and "no such checkpoint" in res.stderr


def test_generate_from_an_import_hf_checkpoint(chat_ckpt: Path, tmp_path: Path) -> None:
    pytest.importorskip("transformers")  # the dev extra installs it; `.[hf]` for users
    from kimi_lab.hf.exporter import export_hf
    from kimi_lab.hf.importer import import_hf

    hf_dir = export_hf(str(chat_ckpt), str(tmp_path / "hf"))
    imported, _ = import_hf(str(hf_dir), str(tmp_path / "imported.ckpt"))
    out = io.StringIO()
    generate_text(load_model(imported), "The expert", [], Sampler(max_new_tokens=10, temperature=0), out)
    assert out.getvalue() == _greedy_text(chat_ckpt, "The expert", 10) + "\n"


@pytest.fixture(scope="module")
def vl_ckpt(tiny_tokenizer: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_checkpoint(
        tmp_path_factory.mktemp("vl") / "tiny-vl.ckpt", tiny_tokenizer, model_name="tiny-vl"
    )


def _png(path: Path, color: tuple[int, int, int]) -> Path:
    from PIL import Image

    Image.new("RGB", (40, 30), color).save(path)
    return path


def test_a_vl_model_takes_images(vl_ckpt: Path, tmp_path: Path) -> None:
    loaded = load_model(vl_ckpt)
    seen: list[int] = []
    loaded.model.vision_tower.register_forward_hook(lambda m, args, out: seen.append(int(args[0].shape[0])))
    texts = []
    for color in ((255, 0, 0), (0, 0, 255)):
        out = io.StringIO()
        image = read_image(_png(tmp_path / "a.png", color))
        generate_text(loaded, "This picture shows", [image], Sampler(max_new_tokens=6, temperature=0), out)
        texts.append(out.getvalue())
    assert len(seen) == 2 and seen[0] > 0  # the image's patches went through the vision tower
    # the chat takes images too (the /image command attaches them to the next message)
    session = ChatSession(loaded, Sampler(max_new_tokens=4, temperature=0), io.StringIO())
    session.turn("what is this?", [str(_png(tmp_path / "b.png", (0, 255, 0)))])
    assert session.messages[-2].images == ["image_0"] and len(seen) == 3


def test_chat_runs_tool_calls_in_the_sandbox_and_shows_them(parrot_ckpt: Path, sandbox: None) -> None:
    out = io.StringIO()
    session = ChatSession(load_model(parrot_ckpt), Sampler(temperature=0), out, tools=True, max_tool_rounds=1)
    session.turn("what is 1/0?")
    shown = out.getvalue()
    assert "[tool call: python]\n1/0\n" in shown
    assert "[python output]" in shown and "ZeroDivisionError" in shown  # it really ran
    roles = [m.role for m in session.messages]
    assert roles == ["system", "user", "assistant", "tool", "assistant"]
    assert "ZeroDivisionError" in session.messages[3].content  # the model read the result
    assert "[stopped after 1 rounds of tool calls]" in shown  # the parrot would call forever


def test_chat_hands_the_model_the_images_its_code_saved(parrot_ckpt: Path) -> None:
    from dataclasses import dataclass, field

    from PIL import Image

    @dataclass
    class Drawn:  # what the sandbox returns for a program that saved a picture
        status: str = "ok"
        images: list = field(default_factory=list)

        def observation(self, max_chars: int) -> str:
            return "saved plot.png"

    png = io.BytesIO()
    Image.new("RGB", (32, 32), (0, 128, 255)).save(png, format="PNG")
    session = ChatSession(
        load_model(parrot_ckpt),
        Sampler(temperature=0),
        io.StringIO(),
        tools=True,
        max_tool_rounds=1,
        run_tool=lambda *a: Drawn(images=[("plot.png", png.getvalue())]),
    )
    session.turn("plot it")
    result = session.messages[3]
    assert result.role == "tool" and result.images == ["tool1_plot"]
    assert session.dialogue.images["tool1_plot"].shape == (32, 32, 3)
    # the next turn was sampled after it: a text-only model reads where the image is
    assert "<image:tool1_plot>" in session.loaded.tokenizer.decode(session.dialogue.tokens)
    assert session.dialogue.tool_images == []  # the user attached none: the code tool gets none


def test_chat_without_tools_shows_calls_and_runs_none(parrot_ckpt: Path) -> None:
    ran = []
    out = io.StringIO()
    session = ChatSession(
        load_model(parrot_ckpt), Sampler(temperature=0), out, run_tool=lambda *a: ran.append(a)
    )
    session.turn("hi")
    assert ran == [] and "shown, not run" in out.getvalue()
    assert [m.role for m in session.messages] == ["user", "assistant"]


def test_chat_loop_commands(chat_ckpt: Path) -> None:
    lines = iter(["hello", "/image /no/such.png", "/reset", "again", "/exit", "never read"])
    out = io.StringIO()
    session = ChatSession(load_model(chat_ckpt), Sampler(max_new_tokens=4, temperature=0), out)
    chat_loop(session, lambda _prompt: next(lines))
    text = out.getvalue()
    assert "no vision tower" in text and "[new conversation]" in text
    assert [m.role for m in session.messages] == ["user", "assistant"]  # only what came after /reset
    assert session.messages[0].content == "again"


def test_chat_command_as_a_user_runs_it(parrot_ckpt: Path, sandbox: None, tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "kimi_lab.cli", "chat", str(parrot_ckpt), "--tools", "python", "--temperature", "0",
         "--max-tool-rounds", "1"],
        input="what is 1/0?\n",
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert "[tool call: python]" in res.stdout and "ZeroDivisionError" in res.stdout
