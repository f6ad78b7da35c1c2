"""Byte-level BPE trained on the standard library: deterministic, lossless, fixed special ids."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from kimi_lab.data.tokenizer import SPECIAL_TOKENS, Tokenizer, load_or_train, train_tokenizer
from kimi_lab.errors import ConfigError


def test_training_is_deterministic(tmp_path: Path, tiny_tokenizer: Path) -> None:
    again = train_tokenizer(512, tmp_path / "again.json", max_bytes=1_500_000)
    digest = lambda p: hashlib.sha256(Path(p).read_bytes()).hexdigest()  # noqa: E731
    assert digest(again) == digest(tiny_tokenizer)


def test_round_trip_and_special_tokens(tiny_tokenizer: Path) -> None:
    tok = Tokenizer(tiny_tokenizer)
    assert tok.vocab_size == 512
    text = 'def f(x):\n    """Naïve docstring, ünïcödé — and emoji 🙂."""\n    return x ** 2\n'
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert len(ids) < len(text.encode())  # merges learned from real code compress it
    assert [tok.token_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    assert tok.eos_id == 0 and tok.pad_id == 1


def test_load_or_train_caches_and_checks_the_vocab(tmp_path: Path, tiny_tokenizer: Path) -> None:
    path = tmp_path / "cache" / "bpe-300.json"
    tok = load_or_train(path, 300)
    assert path.is_file() and tok.vocab_size == 300
    mtime = path.stat().st_mtime_ns
    load_or_train(path, 300)
    assert path.stat().st_mtime_ns == mtime  # cached, not rebuilt
    with pytest.raises(ConfigError, match=r"model\.vocab_size=256"):
        load_or_train(tiny_tokenizer, 256)
    with pytest.raises(ConfigError, match="too small"):
        train_tokenizer(100, tmp_path / "x.json")
