"""The tokenizer side of an HF folder: what ``export-hf`` writes and ``import-hf`` reads back.

An export carries, beside the weights:
- the tokenizer itself: kimi_lab's byte-level BPE as ``tokenizer.json``, or the released
  K2 / K2.5 ``tiktoken.model``;
- ``tokenizer_config.json``: the end-of-text, beginning and padding tokens (transformers'
  ``AutoTokenizer`` and lm-eval's ``hf`` model need them) and the chat template of
  kimi_lab's format (``kimi_lab.chat_template``), spelled in this tokenizer's tokens;
- ``generation_config.json``: the stop ids of the chat format (``<|im_end|>``, then
  end-of-text), the padding id, so transformers' ``generate`` stops where kimi_lab does.

kimi_lab has no separate beginning-of-sequence token: documents are separated by
end-of-text, which therefore also plays BOS (as in GPT-2); nothing adds it when encoding.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

from kimi_lab.config.schema import RunConfig
from kimi_lab.errors import ConfigError

TOKENIZER_CONFIG = "tokenizer_config.json"
GENERATION_CONFIG = "generation_config.json"
TOKENIZER_FILES = ("tiktoken.model", "tokenizer.json", TOKENIZER_CONFIG, GENERATION_CONFIG)
BOS_NAMES = ("[BOS]",)  # the released K2 tokenizer's own BOS, kept when the tokenizer has it


def _text(tok: Any, token: str) -> str:
    """How this tokenizer spells kimi_lab's special token (K2's tiktoken file names them its own way)."""
    return tok.decode([tok.token_id(token)])


def tokenizer_config(tok: Any, max_seq_len: int, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """``tokenizer_config.json`` for ``tok``; ``base`` (the released tokenizer's own config, for a
    tiktoken file) keeps its other keys: its special-token table and its tokenizer class."""
    from kimi_lab.chat_template import chat_template
    from kimi_lab.data.tokenizer import EOS, PAD

    eos = _text(tok, EOS)
    bos = next((b for b in BOS_NAMES if _has(tok, b)), None)
    out = dict(base or {"tokenizer_class": "PreTrainedTokenizerFast"})
    out.update(
        bos_token=_text(tok, bos) if bos else eos,
        eos_token=eos,
        pad_token=_text(tok, PAD),
        add_bos_token=False,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
        model_max_length=max_seq_len,
        chat_template=chat_template(lambda t: _text(tok, t)),
    )
    return out


def generation_config(tok: Any) -> dict[str, Any]:
    """``generation_config.json``: stop where the chat format stops, pad with kimi_lab's pad."""
    from kimi_lab.chat_format import ChatEncoder

    bos = next((b for b in BOS_NAMES if _has(tok, b)), None)
    return {
        "bos_token_id": tok.token_id(bos) if bos else tok.eos_id,
        "eos_token_id": list(ChatEncoder(tok).stop_ids),
        "pad_token_id": tok.pad_id,
    }


def _has(tok: Any, token: str) -> bool:
    try:
        tok.token_id(token)
    except ConfigError:
        return False
    return True


def write_tokenizer_files(run: RunConfig, ckpt: Path, out: Path) -> list[str]:
    """The checkpoint's tokenizer and both configs into ``out``; the names written (none when
    the checkpoint's tokenizer cannot be found, which the caller reports)."""
    from kimi_lab.data.tokenizer import open_tokenizer
    from kimi_lab.decode.loading import find_tokenizer

    found = find_tokenizer(run, ckpt)
    if found is None:
        return []
    base = None
    if found.name == "tiktoken.model" or found.suffix in (".model", ".tiktoken"):
        shutil.copy(found, out / "tiktoken.model")
        if (found.parent / TOKENIZER_CONFIG).is_file():  # names K2's special ids: the tokenizer needs it
            base = _read_json(found.parent / TOKENIZER_CONFIG)
            shutil.copy(found.parent / TOKENIZER_CONFIG, out / TOKENIZER_CONFIG)
        tok = open_tokenizer(out / "tiktoken.model")
    else:  # kimi_lab's byte-level BPE
        shutil.copy(found, out / "tokenizer.json")
        tok = open_tokenizer(out / "tokenizer.json")
    config = tokenizer_config(tok, run.model.max_seq_len, base)
    (out / TOKENIZER_CONFIG).write_text(json.dumps(config, indent=2, ensure_ascii=False))
    (out / GENERATION_CONFIG).write_text(json.dumps(generation_config(tok), indent=2))
    return [p.name for p in (found, out / TOKENIZER_CONFIG, out / GENERATION_CONFIG)]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exn:
        raise ConfigError(f"{path}: not readable JSON ({type(exn).__name__}: {exn})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return data


def read_tokenizer_files(hf_dir: Path, tokenizer_path: Path | None) -> dict[str, Any]:
    """What an HF folder's two configs say, checked against kimi_lab's reading of its tokenizer.

    Returns the record ``import-hf`` keeps in the checkpoint's ``meta.pt`` (eos, pad and stop
    ids, and whether the chat template is kimi_lab's); a malformed file is a one-line error,
    and a config that disagrees with kimi_lab (another end-of-text, other stop ids, another
    chat format) is said on stderr, one line each: the model is imported all the same, and
    kimi_lab samples with its own chat format and stop ids.
    """
    config_path, gen_path = hf_dir / TOKENIZER_CONFIG, hf_dir / GENERATION_CONFIG
    config = _read_json(config_path) if config_path.is_file() else {}
    gen = _read_json(gen_path) if gen_path.is_file() else {}
    record: dict[str, Any] = {
        "eos_token": config.get("eos_token"),
        "pad_token": config.get("pad_token"),
        "stop_ids": gen.get("eos_token_id"),
        "pad_token_id": gen.get("pad_token_id"),
        "chat_template": None,
    }
    if tokenizer_path is None or not (config or gen):
        return record
    from kimi_lab.chat_format import ChatEncoder
    from kimi_lab.data.tokenizer import open_tokenizer

    tok = open_tokenizer(tokenizer_path)
    ours = tokenizer_config(tok, 0)
    template = config.get("chat_template")
    if template is not None:
        record["chat_template"] = "kimi_lab" if template == ours["chat_template"] else "other"
    notes = []
    for key in ("eos_token", "pad_token"):
        named = config.get(key)
        if isinstance(named, dict):  # {"content": ..., ...}: transformers' AddedToken form
            named = named.get("content")
        if named is not None and named != ours[key]:
            notes.append(f"{key} is {named!r}, kimi_lab uses {ours[key]!r}")
    stops = gen.get("eos_token_id")
    stops = [stops] if isinstance(stops, int) else stops
    if stops is not None and set(stops) != set(ChatEncoder(tok).stop_ids):
        notes.append(
            f"generation_config stops at {stops}, kimi_lab's chat format at {list(ChatEncoder(tok).stop_ids)}"
        )
    if record["chat_template"] == "other":
        notes.append("the chat template is not kimi_lab's chat format (kimi_lab renders its own)")
    for note in notes:
        print(f"import-hf: {hf_dir.name}: {note}", file=sys.stderr)
    return record
