"""The released K2 / K2.5 tokenizer (tiktoken BPE + named special ids) behind kimi_lab's interface."""

from __future__ import annotations

from pathlib import Path

import pytest

from kimi_lab.data.tokenizer import SPECIAL_TOKENS, Tokenizer, open_tokenizer
from kimi_lab.errors import ConfigError
from tests.hf import synthetic as S

pytest.importorskip("tiktoken")


def test_a_tiktoken_file_encodes_decodes_and_names_its_special_tokens(tmp_path: Path) -> None:
    from kimi_lab.data.tiktoken_tokenizer import TiktokenTokenizer

    vocab = S.write_tiktoken(tmp_path)
    tok = open_tokenizer(tmp_path / "tiktoken.model")
    assert isinstance(tok, TiktokenTokenizer)
    # every call of kimi_lab's own BPE, which consumers make of either
    methods = {n for n, v in vars(Tokenizer).items() if callable(v) and not n.startswith("_")}
    assert methods == {"token_id", "encode", "encode_batch", "decode"}
    assert all(callable(getattr(tok, n)) for n in methods)
    assert all(isinstance(getattr(tok, n), int) for n in ("vocab_size", "eos_id", "pad_id"))
    n = vocab - 256
    assert tok.vocab_size == vocab
    text = "the cat sat on the mat\n\tNaïve ünïcödé — 漢字 and 🙂 1234567"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert len(ids) < len(text.encode())  # the merges are used
    assert tok.encode("the") == [256, ord("e")]  # "th" (rank 256) then "e": BPE by rank
    # K2's own names, and kimi_lab's names mapped onto the K2 token with the same role
    assert tok.token_id("[EOS]") == tok.eos_id == n + 1 and tok.pad_id == n + 255
    assert tok.token_id("<|image_pad|>") == tok.token_id("<|media_pad|>") == n + 21
    assert tok.token_id("<|user|>") == n + 3 and tok.token_id("<|im_end|>") == n + 2
    assert tok.encode("hi<|im_end|>")[-1] == n + 2  # special text is the special token
    # every kimi_lab special token resolves, to distinct ids inside the special range
    ids = [tok.token_id(t) for t in SPECIAL_TOKENS if not t.startswith("<|reserved")]
    assert len(set(ids)) == len(ids) and all(n <= i < vocab for i in ids)
    # the ones K2 has no counterpart for take unnamed ids, the same ones every time
    named = {n + i for i in S.K2_SPECIALS}
    assert tok.token_id("<|video_pad|>") not in named and tok.token_id("<|im_start|>") not in named
    assert TiktokenTokenizer(tmp_path / "tiktoken.model").aliases == tok.aliases
    with pytest.raises(ConfigError, match="lacks the special token"):
        tok.token_id("<|nope|>")


def test_open_tokenizer_reads_either_format_and_a_folder(tmp_path: Path, tiny_tokenizer: Path) -> None:
    from kimi_lab.data.tiktoken_tokenizer import TiktokenTokenizer

    S.write_tiktoken(tmp_path / "k2")
    assert type(open_tokenizer(tiny_tokenizer)) is Tokenizer
    assert isinstance(open_tokenizer(tmp_path / "k2"), TiktokenTokenizer)
    (tmp_path / "bad.model").write_text("not base64 at all\n")
    with pytest.raises(ConfigError, match="not a tiktoken BPE file"):
        open_tokenizer(tmp_path / "bad.model")
    with pytest.raises(ConfigError, match=r"no tiktoken\.model or tokenizer\.json"):
        open_tokenizer(tmp_path)
