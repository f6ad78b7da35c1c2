"""Packing documents into fixed-length windows, with placeholder runs for vision blocks.

A document becomes one token stream: text tokens as they are, each vision block
as ``<|media_start|> <|image_pad|>*n <|media_end|>`` (``<|video_pad|>`` for video
chunks), and ``<|endoftext|>`` at the end. Windows hold ``seq_len + 1`` tokens:
inputs ``[:-1]`` and next-token targets ``[1:]``; each window's last token is the
next window's first, so no text token is lost at a boundary. Text may straddle
windows; a placeholder run never does: if it does not fit in what is left of a
window's inputs, the window is closed with ``<|pad|>`` and the run opens the next.
Loss is on text targets only (placeholders, media markers and padding masked).
Tokens a document marks as members of a named subset (``Document.marks``) keep their
marks in the window, so validation can also score that subset alone.

Chat documents (SFT) differ in three ways: only the tokens their ``train_flags``
mark are targets (the assistant's turns); a conversation is never split: if it
does not fit in what is left of the window, the window is closed with padding and
the conversation opens the next one (longer than a window: skipped, too_long); and
a window holding one is *fenced*: every document (and every run of padding) is a
segment of its own, which attends only to itself, with positions from 0 at its
first token (``Window.segments`` / ``Window.positions``). So a conversation trains
exactly as it is sampled, alone from position 0, and never sees its neighbours'
names. Windows of text alone keep plain causal attention over the whole window
(pre-training packs documents as before).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from kimi_lab.data.decode import Document, SampleSkip
from kimi_lab.data.tokenizer import Tokenizer
from kimi_lab.data.vision import VisionBlock


@dataclass
class SpecialIds:
    eos: int
    pad: int
    media_start: int
    media_end: int
    image: int
    video: int

    @classmethod
    def from_tokenizer(cls, tok: Tokenizer) -> SpecialIds:
        return cls(
            eos=tok.eos_id,
            pad=tok.pad_id,
            media_start=tok.token_id("<|media_start|>"),
            media_end=tok.token_id("<|media_end|>"),
            image=tok.token_id("<|image_pad|>"),
            video=tok.token_id("<|video_pad|>"),
        )

    @property
    def non_text(self) -> tuple[int, ...]:
        return (self.pad, self.media_start, self.media_end, self.image, self.video)


@dataclass
class Window:
    tokens: torch.Tensor  # (seq_len + 1,) int64
    targets: torch.Tensor  # (seq_len + 1,) bool: may this token be a training target
    blocks: list[VisionBlock]  # in order of their placeholder runs in the inputs
    keys: list[str] = field(default_factory=list)  # documents that start in this window
    vision_source_tokens: int = 0  # input tokens that came from documents of vision sources
    marks: torch.Tensor | None = None  # (seq_len + 1,) int: subset bits per token (Document.marks)
    # Fenced windows (those holding a conversation): a segment id per token (attention stays
    # inside a segment) and each token's position in its segment; None: plain causal attention.
    segments: torch.Tensor | None = None  # (seq_len + 1,) int64
    positions: torch.Tensor | None = None  # (seq_len + 1,) int64


class Packer:
    """Stateful packer. Every token it holds remembers (document serial, index in that
    document's token stream), so the start of the next window is a resumable position."""

    def __init__(self, seq_len: int, ids: SpecialIds) -> None:
        self.L = seq_len
        self.ids = ids
        self.items: list[int] = []  # tokens from the current window's start on
        self.targets: list[bool] = []  # per item: a training target (chat: assistant tokens only)
        self.marks: list[int] = []  # per item: bits of the named subsets it belongs to
        self.owner: list[tuple[int, int] | None] = []  # (doc serial, token index in doc); None = padding
        self.blocks: list[tuple[int, VisionBlock]] = []  # (offset in items, block)
        self.keys: list[tuple[int, str]] = []
        self.cursor: tuple[int, int] | None = None  # next token of the document being added
        self.vision_docs: set[int] = set()  # serials of documents from vision sources
        self.chat_docs: set[int] = set()  # serials of conversations (their windows are fenced)

    @staticmethod
    def run_length(block: VisionBlock) -> int:
        return block.n_tokens + 2

    def check(self, doc: Document) -> None:
        if doc.train_flags is not None and len(doc.train_flags) + 1 > self.L + 1:
            raise SampleSkip(
                "too_long", f"a conversation of {len(doc.train_flags)} tokens exceeds data.seq_len={self.L}"
            )
        for seg in doc.segments:
            if isinstance(seg, VisionBlock) and self.run_length(seg) > self.L:
                raise SampleSkip(
                    "too_long", f"a vision block of {seg.n_tokens} tokens exceeds data.seq_len={self.L}"
                )

    def add(self, doc: Document, serial: int, skip: int = 0, vision_source: bool = False) -> Iterator[Window]:
        """Append a document (minus its first ``skip`` tokens); yield every window it completes."""
        if vision_source:
            self.vision_docs.add(serial)
        index = 0
        flags = doc.train_flags
        if flags is not None:
            self.chat_docs.add(serial)
        if flags is not None and skip == 0 and self.items and len(self.items) + len(flags) + 1 > self.L + 1:
            # A conversation is never split: close this window with padding, start it in the next.
            self._pad(self.L - len(self.items))
            yield from self._emit(padded=True)
        if skip == 0:
            self.keys.append((len(self.items), doc.key))
        for seg in doc.segments:
            if isinstance(seg, VisionBlock):
                n = self.run_length(seg)
                if index + n <= skip:
                    index += n
                    continue
                assert index >= skip, "a resume position never falls inside a placeholder run"
                self.cursor = (serial, index)
                yield from self._add_run(seg, serial, index)
                index += n
            else:
                start = max(0, skip - index)
                self.items.extend(seg[start:])
                self.targets.extend(
                    flags[index + start : index + len(seg)] if flags else [True] * (len(seg) - start)
                )
                self.marks.extend(
                    doc.marks[index + start : index + len(seg)] if doc.marks else [0] * (len(seg) - start)
                )
                self.owner.extend((serial, index + i) for i in range(start, len(seg)))
                index += len(seg)
                self.cursor = (serial, index)
                yield from self._emit()
        if index >= skip:
            self.items.append(self.ids.eos)
            self.targets.append(flags is None)  # a conversation ends at the assistant's <|im_end|>
            self.marks.append(0)
            self.owner.append((serial, index))
            self.cursor = None
            yield from self._emit()
        self.cursor = None

    def resume_point(self) -> tuple[int, int] | None:
        """(document serial, token index) where the next window starts; None: at a document edge."""
        if self.owner:
            return self.owner[0]
        return self.cursor

    def _add_run(self, block: VisionBlock, serial: int, index: int) -> Iterator[Window]:
        n = self.run_length(block)
        if len(self.items) + n > self.L:  # does not fit in this window's inputs: close it
            self._pad(self.L - len(self.items))
            yield from self._emit(padded=True)
        pad = self.ids.image if block.kind == "image" else self.ids.video
        self.blocks.append((len(self.items), block))
        self.items.extend([self.ids.media_start, *([pad] * block.n_tokens), self.ids.media_end])
        self.targets.extend([False] * n)
        self.marks.extend([0] * n)
        self.owner.extend((serial, index + i) for i in range(n))
        yield from self._emit()

    def _pad(self, n: int) -> None:
        self.items.extend([self.ids.pad] * n)
        self.targets.extend([False] * n)
        self.marks.extend([0] * n)
        self.owner.extend([None] * n)

    def _emit(self, padded: bool = False) -> Iterator[Window]:
        while len(self.items) >= self.L + 1 or (padded and len(self.items) == self.L):
            if padded:  # the last input's target is padding too; the next window starts fresh
                self._pad(1)
            tokens = torch.tensor(self.items[: self.L + 1], dtype=torch.long)
            targets = torch.tensor(self.targets[: self.L + 1], dtype=torch.bool)
            marks = torch.tensor(self.marks[: self.L + 1], dtype=torch.int32)
            inside = [b for off, b in self.blocks if off < self.L]
            keys = [k for off, k in self.keys if off < self.L]
            from_vision = sum(1 for o in self.owner[: self.L] if o is not None and o[0] in self.vision_docs)
            fenced = any(o is not None and o[0] in self.chat_docs for o in self.owner[: self.L + 1])
            segments, positions = segment_layout(self.owner[: self.L + 1]) if fenced else (None, None)
            # Normally the last token opens the next window; after padding, nothing is shared.
            step = self.L + 1 if padded else self.L
            del self.items[:step], self.owner[:step], self.targets[:step], self.marks[:step]
            self.blocks = [(off - step, b) for off, b in self.blocks if off >= self.L]
            self.keys = [(off - step, k) for off, k in self.keys if off >= self.L]
            padded = False
            first = self.resume_point()
            # forget documents no pending token belongs to
            self.vision_docs = {d for d in self.vision_docs if first is not None and d >= first[0]}
            self.chat_docs = {d for d in self.chat_docs if first is not None and d >= first[0]}
            yield Window(tokens, targets, inside, keys, from_vision, marks, segments, positions)


def segment_layout(owner: list[tuple[int, int] | None]) -> tuple[torch.Tensor, torch.Tensor]:
    """Segment ids and in-segment positions of a window's tokens from their owners: a new segment
    wherever the owning document changes, and each run of padding (owner None) is one too."""
    segments, positions = [], []
    seg, pos, prev = -1, 0, object()
    for o in owner:
        doc = None if o is None else o[0]
        if seg < 0 or doc != prev:
            seg, pos, prev = seg + 1, 0, doc
        segments.append(seg)
        positions.append(pos)
        pos += 1
    return torch.tensor(segments, dtype=torch.long), torch.tensor(positions, dtype=torch.long)


def loss_mask(
    tokens_BL1: torch.Tensor, ids: SpecialIds, targets_BL1: torch.Tensor | None = None
) -> torch.Tensor:
    """(B, L) True where the target token is text (and, with ``targets_BL1``, flagged as a target)."""
    nxt = tokens_BL1[:, 1:]
    mask = torch.ones_like(nxt, dtype=torch.bool)
    for t in ids.non_text:
        mask &= nxt != t
    if targets_BL1 is not None:
        mask &= targets_BL1[:, 1:]
    return mask
