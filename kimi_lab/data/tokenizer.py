"""Byte-level BPE tokenizer, trained deterministically on the standard-library corpus and cached.

``open_tokenizer`` is the one factory every consumer uses: it also opens the released
K2 / K2.5 tiktoken file (``data.tiktoken_tokenizer``) behind the same interface.

Byte-level means any UTF-8 text encodes without unknown tokens. The special
tokens are fixed up front (document end, padding, chat roles, tool calls, media
placeholders, and reserved slots for later phases), so their ids never change
between tokenizer versions.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from kimi_lab.errors import ConfigError

log = logging.getLogger(__name__)

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|pad|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|tool|>",
    "<|tool_call_begin|>",
    "<|tool_call_end|>",
    "<|tool_result_begin|>",
    "<|tool_result_end|>",
    "<|media_start|>",
    "<|media_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
] + [f"<|reserved_{i}|>" for i in range(16)]
EOS = "<|endoftext|>"
PAD = "<|pad|>"
# Enough text for stable merges at these vocab sizes, small enough to train in seconds.
TRAIN_BYTES = 6_000_000


class Tokenizer:
    """A thin wrapper over a ``tokenizers.Tokenizer`` with the ids kimi_lab needs."""

    def __init__(self, path: str | Path) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        self.path = Path(path)
        self._tok = HFTokenizer.from_file(str(self.path))
        self.vocab_size = self._tok.get_vocab_size()
        self.eos_id = self.token_id(EOS)
        self.pad_id = self.token_id(PAD)

    def token_id(self, token: str) -> int:
        idx = self._tok.token_to_id(token)
        if idx is None:
            raise ConfigError(f"tokenizer {self.path} lacks the special token {token}")
        return idx

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=False)


def train_tokenizer(vocab_size: int, out: str | Path, max_bytes: int = TRAIN_BYTES) -> Path:
    """Train a byte-level BPE of ``vocab_size`` on the stdlib corpus and save it atomically."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    from kimi_lab.data.corpus import stdlib_documents

    min_size = 256 + len(SPECIAL_TOKENS)
    if vocab_size < min_size:
        raise ConfigError(
            f"vocab_size={vocab_size} is too small for a byte-level BPE: it needs at least {min_size}"
        )
    # One thread: BPE merge ties then resolve the same way on every machine.
    os.environ.setdefault("RAYON_NUM_THREADS", "1")
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    docs = (d.text for d in stdlib_documents(max_bytes=max_bytes))
    tok.train_from_iterator(docs, trainer=trainer)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tok.save(str(tmp))
    os.replace(tmp, out)
    return out


def open_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer in a file: a ``tokenizers`` JSON (kimi_lab's BPE) or a tiktoken BPE file
    (the released K2 / K2.5 ``tiktoken.model``, its special tokens named by the
    ``tokenizer_config.json`` beside it). Both answer the same calls."""
    from kimi_lab.data.tiktoken_tokenizer import TiktokenTokenizer, is_tiktoken_file

    path = Path(path)
    if path.is_dir():  # an HF folder or an imported checkpoint: its tokenizer file
        found = [p for p in (path / "tiktoken.model", path / "tokenizer.json") if p.is_file()]
        if not found:
            raise ConfigError(f"{path}: no tiktoken.model or tokenizer.json in this folder")
        path = found[0]
    if is_tiktoken_file(path):
        return TiktokenTokenizer(path)
    return Tokenizer(path)


def load_or_train(path: str | Path, vocab_size: int) -> Tokenizer:
    """Load the cached tokenizer at ``path``, training it first when it does not exist yet."""
    path = Path(path)
    if not path.exists():
        log.info("Training a %d-token byte-level BPE on the Python standard library -> %s", vocab_size, path)
        train_tokenizer(vocab_size, path)
    tok = open_tokenizer(path)
    if tok.vocab_size > vocab_size:
        raise ConfigError(
            f"data.tokenizer={path} has {tok.vocab_size} tokens but model.vocab_size={vocab_size}; "
            "use a tokenizer built for this vocab size"
        )
    return tok
