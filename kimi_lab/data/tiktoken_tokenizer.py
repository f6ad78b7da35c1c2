"""The released Kimi K2 / K2.5 tokenizer: a tiktoken BPE file and its special tokens.

K2 ships ``tiktoken.model`` (one base64 token and its rank per line, 163,584 of
them) and names its 256 special ids in ``tokenizer_config.json``
(``added_tokens_decoder``: ``[BOS]``, ``[EOS]``, ``<|im_end|>``, ``<|im_user|>``,
``<|media_pad|>``, ...); unnamed ids are reserved. It is read with the ``tiktoken``
package. kimi_lab's code asks for its own special tokens by name (``<|endoftext|>``,
``<|image_pad|>``, ...): each is the K2 token that plays the same part, and the
few K2 has no counterpart for take reserved ids from the top of the range,
always the same ones for the same config.
"""

from __future__ import annotations

import json
from pathlib import Path

from kimi_lab.errors import ConfigError

RESERVED = 256  # special ids after the BPE ranks

# K2's pre-tokenizer (tokenization_kimi.py): Han runs; cased words with English contractions;
# up to three digits; punctuation runs; newlines; other whitespace.
PAT_STR = "|".join(
    [
        r"[\p{Han}]+",
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+"
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*"
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"\p{N}{1,3}",
        r" ?[^\s\p{L}\p{N}]+[\r\n]*",
        r"\s*[\r\n]+",
        r"\s+(?!\S)",
        r"\s+",
    ]
)

# kimi_lab's special token -> the K2 / K2.5 token with the same role
ALIASES = {
    "<|endoftext|>": "[EOS]",
    "<|pad|>": "[PAD]",
    "<|im_end|>": "<|im_end|>",
    "<|system|>": "<|im_system|>",
    "<|user|>": "<|im_user|>",
    "<|assistant|>": "<|im_assistant|>",
    "<|tool_call_begin|>": "<|tool_call_begin|>",
    "<|tool_call_end|>": "<|tool_call_end|>",
    "<|media_start|>": "<|media_begin|>",
    "<|media_end|>": "<|media_end|>",
    "<|image_pad|>": "<|media_pad|>",
}
# kimi_lab's special tokens with no K2 counterpart, in the order they take reserved ids (from the top)
UNPAIRED = [
    "<|im_start|>",
    "<|tool|>",
    "<|tool_result_begin|>",
    "<|tool_result_end|>",
    "<|video_pad|>",
]
CHUNK_CHARS = 400_000  # tiktoken's Rust core is happiest with bounded pieces (K2 splits likewise)


def is_tiktoken_file(path: str | Path) -> bool:
    """A tiktoken BPE file rather than a ``tokenizers`` JSON (by name, then by its first line)."""
    path = Path(path)
    if path.suffix in (".model", ".tiktoken"):
        return True
    if path.suffix == ".json" or not path.is_file():
        return False
    with open(path, "rb") as f:
        first = f.readline().split()
    return len(first) == 2 and first[1].isdigit()


def _named_specials(path: Path, n_base: int) -> dict[int, str]:
    """id -> name of the special tokens a tokenizer_config.json beside the BPE file declares."""
    config = path.parent / "tokenizer_config.json"
    if not config.is_file():
        return {}
    try:
        decoder = json.loads(config.read_text()).get("added_tokens_decoder") or {}
        named = {int(i): entry["content"] for i, entry in decoder.items()}
    except (OSError, ValueError, KeyError, TypeError) as exn:
        raise ConfigError(f"{config}: unreadable added_tokens_decoder ({exn})") from None
    outside = [i for i in named if not n_base <= i < n_base + RESERVED]
    if outside:
        raise ConfigError(f"{config}: special id {outside[0]} is outside {n_base}..{n_base + RESERVED - 1}")
    return named


class TiktokenTokenizer:
    """``data.tokenizer.Tokenizer``'s interface (``path``, ``vocab_size``, ``eos_id``, ``pad_id``,
    ``token_id``, ``encode``, ``encode_batch``, ``decode``) over a tiktoken BPE file. It does not
    subclass it: ``data.tokenizer.open_tokenizer`` opens either, so this module stays below that one."""

    def __init__(self, path: str | Path) -> None:
        try:
            import tiktoken
            from tiktoken.load import load_tiktoken_bpe
        except ImportError as exn:
            raise ConfigError(
                f"a tiktoken tokenizer needs the tiktoken package: pip install -e '.[hf]' ({exn})"
            ) from None
        self.path = Path(path)
        try:
            ranks = load_tiktoken_bpe(str(self.path))
        except Exception as exn:
            raise ConfigError(f"{self.path}: not a tiktoken BPE file ({type(exn).__name__}: {exn})") from None
        n = len(ranks)
        named = _named_specials(self.path, n)
        self.specials = {named.get(i, f"<|reserved_token_{i}|>"): i for i in range(n, n + RESERVED)}
        free = [i for i in range(n + RESERVED - 1, n - 1, -1) if i not in named]
        self.aliases = {
            ours: self.specials[theirs] for ours, theirs in ALIASES.items() if theirs in self.specials
        }
        for ours in UNPAIRED + [t for t in ALIASES if t not in self.aliases]:
            if not free:
                raise ConfigError(f"{self.path}: no reserved special id left for {ours}")
            self.aliases[ours] = free.pop(0)
        self._enc = tiktoken.Encoding(
            name=self.path.name, pat_str=PAT_STR, mergeable_ranks=ranks, special_tokens=self.specials
        )
        self.vocab_size = self._enc.n_vocab
        self.eos_id = self.token_id("<|endoftext|>")
        self.pad_id = self.token_id("<|pad|>")

    def token_id(self, token: str) -> int:
        """kimi_lab's name for a special token (mapped to K2's), or a K2 special token's own name."""
        idx = self.aliases.get(token, self.specials.get(token))
        if idx is None:
            raise ConfigError(f"tokenizer {self.path} lacks the special token {token}")
        return idx

    def encode(self, text: str) -> list[int]:
        out: list[int] = []
        for i in range(0, len(text), CHUNK_CHARS):
            out += self._enc.encode(text[i : i + CHUNK_CHARS], allowed_special="all")
        return out

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: list[int]) -> str:
        return self._enc.decode(ids)
