"""``kimi-lab generate`` and ``kimi-lab chat``: talk to a checkpoint from the command line.

``generate`` continues a text prompt (images first, for a ``-vl`` model) and prints the
tokens as they are sampled. ``chat`` is an interactive loop in the chat format: the
assistant's words appear as they are sampled; with ``--tools python`` its tool calls run
in the sandboxed code tool, their output is shown and handed back with the images the code
saved, and the assistant goes on: the turn RL rollouts take (``kimi_lab.decode.tool_turns``).
Both load through ``kimi_lab.decode.loading`` (any kimi_lab checkpoint: a training run's, a
sharded folder, one written by ``import-hf``).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np
import torch

from kimi_lab.chat_format import ChatEncoder, Message
from kimi_lab.decode.generation import DecodeOptions, Prompt, Step, generate
from kimi_lab.decode.tool_turns import CodeTool, Dialogue, ToolTurns
from kimi_lab.errors import ConfigError
from kimi_lab.serving.streaming import AssistantStream, IncrementalDecoder

if TYPE_CHECKING:
    from kimi_lab.data.vision import VisionBlock
    from kimi_lab.decode.loading import LoadedModel

TOOL_NAME = "python"
CHAT_HELP = "/image PATH attaches an image to your next message, /reset starts over, /exit (or Ctrl-D) quits"


@dataclass
class Sampler:
    """How tokens are drawn (``temperature`` 0: greedy)."""

    max_new_tokens: int = 256
    temperature: float = 0.8
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None

    def check(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens={self.max_new_tokens} must be >= 1")
        if self.temperature < 0:
            raise ConfigError(f"--temperature={self.temperature} must be >= 0")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ConfigError(f"--top-p={self.top_p} must be in (0, 1]")
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"--top-k={self.top_k} must be >= 1")

    def generator(self) -> torch.Generator | None:
        return None if self.seed is None else torch.Generator().manual_seed(self.seed)

    def options(self, enc: ChatEncoder, pad_id: int, generator: torch.Generator | None) -> DecodeOptions:
        """``generate``'s options: this sampling, the chat format's stop and never-sampled tokens."""
        return DecodeOptions(
            self.max_new_tokens,
            enc.stop_ids,
            pad_id,
            self.temperature,
            self.top_k,
            self.top_p,
            generator,
            banned_ids=enc.banned_ids,
        )


def read_image(path: str | Path) -> np.ndarray:
    """An image file as uint8 RGB (H, W, 3); a missing or unreadable file is a one-line error."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, UnidentifiedImageError) as exn:
        raise ConfigError(f"{path}: not a readable image ({type(exn).__name__}: {exn})") from None


def _check_takes_images(loaded: LoadedModel) -> None:
    if loaded.config.model.vision is None:
        raise ConfigError(
            f"{loaded.path}: model {loaded.config.model.name} has no vision tower; images need a -vl model"
        )


def _vision_blocks(loaded: LoadedModel, images: list[np.ndarray]) -> list[VisionBlock]:
    from kimi_lab.data.vision import image_block

    if images:
        _check_takes_images(loaded)
    return [image_block(rgb, loaded.config.data.vision) for rgb in images]


def _room(loaded: LoadedModel, prompt: list[int], wanted: int) -> int:
    room = loaded.config.model.max_seq_len - len(prompt)
    if room <= 0:
        raise ConfigError(f"the prompt is {len(prompt)} tokens; the model's context is {room + len(prompt)}")
    return min(wanted, room)


# ------------------------------------------------------------------------ generate
def generate_text(
    loaded: LoadedModel,
    prompt: str,
    images: list[np.ndarray],
    sampler: Sampler,
    out: TextIO,
) -> dict[str, float]:
    """Continue ``prompt`` (after its images), writing the text to ``out`` as it is sampled."""
    sampler.check()
    tok = loaded.tokenizer
    enc = ChatEncoder(tok)
    blocks = _vision_blocks(loaded, images)
    ids: list[int] = []
    for b in blocks:
        ids += [enc.media_start, *[enc.image_pad] * b.n_tokens, enc.media_end]
    ids += tok.encode(prompt)
    if not ids:
        raise ConfigError("--prompt is empty (and no --image): nothing to continue")
    decoder, stops = IncrementalDecoder(tok), set(enc.stop_ids)

    def on_step(step: Step) -> None:
        t = step.tokens[0]
        if t is not None and t not in stops:
            out.write(decoder.push(t))
            out.flush()

    start = time.perf_counter()
    options = replace(
        sampler.options(enc, tok.pad_id, sampler.generator()),
        max_new_tokens=_room(loaded, ids, sampler.max_new_tokens),
    )
    (g,) = generate(loaded.model, [Prompt(ids, blocks)], options, on_token=on_step)
    out.write(decoder.flush() + "\n")
    out.flush()
    seconds = time.perf_counter() - start
    return {"prompt_tokens": len(ids), "new_tokens": len(g.tokens), "seconds": seconds}


# ---------------------------------------------------------------------------- chat
@dataclass
class ChatSession:
    """One conversation with a loaded model; ``turn`` answers a user message (tools included).

    Turns are played by ``kimi_lab.decode.tool_turns``, as RL rollouts play them: the model reads its
    own turns as it sampled them, and the tool's results with the images the code saved."""

    loaded: LoadedModel
    sampler: Sampler
    out: TextIO
    tools: bool = False
    system: str | None = None
    max_tool_rounds: int = 4
    run_tool: Callable[..., Any] | None = None
    dialogue: Dialogue = field(default_factory=Dialogue)

    def __post_init__(self) -> None:
        self.sampler.check()
        self.generator = self.sampler.generator()
        cfg = self.loaded.config
        vision = cfg.data.vision if cfg.model.vision is not None else None
        code = CodeTool(cfg.phase.rl.tool, self.run_tool, min_image_side=vision.patch_size if vision else 1)
        self.engine = ToolTurns(self.loaded.tokenizer, vision, code, cfg.model.max_seq_len)
        self.reset()

    @property
    def messages(self) -> list[Message]:
        return self.dialogue.messages

    def reset(self) -> None:
        from kimi_lab.tasks import SYSTEM_PROMPT

        system = self.system if self.system is not None else (SYSTEM_PROMPT if self.tools else None)
        self.dialogue = Dialogue()
        if system:
            self.engine.add(self.dialogue, [Message("system", system)], prompt=False)

    def _say(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def _assistant_turn(self, run_tools: bool) -> tuple[Message, bool]:
        """Sample one turn, showing it as it comes; with ``run_tools`` its calls are run and
        shown. Returns the turn, and whether its calls were answered (the model goes on)."""
        d, enc = self.dialogue, self.engine.enc
        _room(self.loaded, d.tokens, self.sampler.max_new_tokens)  # a full context is an error, not a cut
        stream, stops = AssistantStream(self.loaded.tokenizer), set(enc.stop_ids)
        n_messages = len(d.messages)

        def show(ev: Any) -> None:
            if ev.content:
                self._say(ev.content)
            for call in ev.tool_calls:
                self._say(f"\n[tool call: {call.name}]\n{call.input}\n")

        def on_step(step: Step) -> None:
            t = step.tokens[0]
            if t is not None and t not in stops:
                show(stream.push(t))

        options = self.sampler.options(enc, self.loaded.tokenizer.pad_id, self.generator)
        answered = self.engine.step(self.loaded.model, [d], options, run_tools=run_tools, on_token=on_step)
        assert d.last is not None
        last, _ = stream.finish(d.last.finished)
        show(last)
        for e in d.last.errors:
            self._say(f"\n[{e}]")
        if not d.last.finished:
            self._say("\n[cut off: --max-new-tokens reached]")
        self._say("\n")
        reply = d.messages[n_messages]
        if answered:  # one tool message per malformed call (shown above), then one per call
            results = d.messages[n_messages + 1 + len(d.last.errors) :]
            for call, result in zip(reply.tool_calls, results, strict=True):
                self._say(f"[{call.name} output]\n{result.content}\n")
        return reply, bool(answered)

    def turn(self, user_text: str, image_paths: list[str] = ()) -> Message:
        """The user's message (and images) in, the assistant's final message out."""
        if image_paths:
            _check_takes_images(self.loaded)
        images = {}
        for path in image_paths:
            name = f"image_{len(self.dialogue.tool_images)}"
            images[name] = read_image(path)
            self.dialogue.tool_images.append(images[name])  # what the code tool gets
        self.engine.add(self.dialogue, [Message("user", user_text, images=list(images))], images)
        rounds, answered = 0, True
        while answered:  # the model goes on while its calls are answered, for at most max_tool_rounds
            reply, answered = self._assistant_turn(run_tools=self.tools and rounds < self.max_tool_rounds)
            rounds += answered
        if reply.tool_calls and not self.tools:
            self._say("[tool calls are shown, not run: start the chat with --tools python]\n")
        elif reply.tool_calls:
            self._say(f"[stopped after {self.max_tool_rounds} rounds of tool calls]\n")
        return reply


def chat_loop(session: ChatSession, read: Callable[[str], str] = input) -> None:
    """Read user lines until /exit or end of input; slash commands as in CHAT_HELP."""
    pending: list[str] = []
    session._say(f"chat with {session.loaded.path} ({CHAT_HELP})\n")
    while True:
        try:
            line = read(">> ")
        except EOFError:
            session._say("\n")
            return
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return
        if text == "/reset":
            session.reset()
            pending = []
            session._say("[new conversation]\n")
            continue
        if text.startswith("/image"):
            path = text.removeprefix("/image").strip()
            try:
                _check_takes_images(session.loaded)
                read_image(path)
            except ConfigError as exn:
                session._say(f"[{exn}]\n")
                continue
            pending.append(path)
            session._say(f"[{path} goes with your next message]\n")
            continue
        session.turn(text, pending)
        pending = []


# ------------------------------------------------------------------ the commands
def load(path: str) -> LoadedModel:
    from kimi_lab.decode.loading import load_model

    loaded = load_model(path)
    if loaded.tokenizer is None:  # pragma: no cover - load_model builds one unless asked not to
        raise ConfigError(f"{path}: no tokenizer")
    return loaded


def generate_command(args: Any) -> None:
    sampler = Sampler(args.max_new_tokens, args.temperature, args.top_p, args.top_k, args.seed)
    sampler.check()
    images = [read_image(p) for p in args.image]
    loaded = load(args.checkpoint)
    stats = generate_text(loaded, args.prompt, images, sampler, sys.stdout)
    rate = stats["new_tokens"] / max(stats["seconds"], 1e-9)
    print(
        f"[{stats['new_tokens']:.0f} tokens in {stats['seconds']:.1f}s, {rate:.1f} tokens/s]",
        file=sys.stderr,
        flush=True,
    )


def chat_command(args: Any) -> None:
    sampler = Sampler(args.max_new_tokens, args.temperature, args.top_p, args.top_k, args.seed)
    sampler.check()
    if args.tools not in (None, TOOL_NAME):
        raise ConfigError(f"--tools {args.tools}: the only tool is {TOOL_NAME}")
    loaded = load(args.checkpoint)
    if args.tools:
        from kimi_lab.tools import sandbox_unavailable_reason

        if (reason := sandbox_unavailable_reason()) is not None:
            raise ConfigError(f"--tools python needs the code sandbox: {reason}")
    with contextlib.suppress(ImportError):  # not on every platform
        import readline  # noqa: F401  (line editing and history for input())
    session = ChatSession(
        loaded,
        sampler,
        sys.stdout,
        tools=bool(args.tools),
        system=args.system,
        max_tool_rounds=args.max_tool_rounds,
    )
    chat_loop(session)
