"""Text shards: the builder, and packing text into windows."""

from __future__ import annotations

import itertools
import json
import tarfile
from pathlib import Path

import pytest
import torch

from data_pipelines.text import build_text, chunks
from kimi_lab.config.schema import DataConfig, SourceConfig
from kimi_lab.data.shards import resolve_shards
from kimi_lab.data.stream import MixedStream, SourceSpec
from kimi_lab.data.tokenizer import Tokenizer
from kimi_lab.errors import DataError


def text_stream(shards: Path, tokenizer: Path, split: str = "val", **cfg_changes) -> MixedStream:
    cfg = DataConfig(sources={"text": SourceConfig(str(shards))}, tokenizer=str(tokenizer), **cfg_changes)
    spec = SourceSpec("text", resolve_shards(str(shards), split), 1.0, vision=False)
    return MixedStream([spec], cfg, train=split == "train")


def shard_texts(urls: list[str]) -> list[str]:
    out = []
    for url in urls:
        with tarfile.open(url) as tar:
            out += [tar.extractfile(m).read().decode() for m in tar if m.name.endswith(".txt")]
    return out


def test_builder_writes_split_shards_and_manifest(tiny_shards: Path) -> None:
    manifest = json.loads((tiny_shards / "manifest.json").read_text())
    assert manifest["modality"] == "text" and manifest["schema_version"] == 1
    assert manifest["counts"]["train"] > 0 and manifest["counts"]["val"] > 0
    assert manifest["shards"]["train"] == sorted(p.name for p in tiny_shards.glob("train-*.tar"))
    with tarfile.open(tiny_shards / manifest["shards"]["train"][0]) as tar:
        names = tar.getnames()
        record = json.loads(tar.extractfile(next(n for n in names if n.endswith(".json"))).read())
    assert record["schema_version"] == 1 and record["modality"] == "text"
    assert record["source"] in ("python-stdlib", "python-docs") and record["provenance"]["path"]


def test_long_documents_are_cut_at_paragraphs() -> None:
    text = "\n\n".join(f"paragraph {i} " + "word " * 50 for i in range(40))
    pieces = chunks(text, 1000)
    assert len(pieces) > 5 and all(len(p) <= 1000 for p in pieces)
    assert all(p.startswith("paragraph") for p in pieces)  # cut between paragraphs
    assert "\n\n".join(pieces) == text


def test_builder_deduplicates_user_text(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("the same words " * 50)
    (src / "b.txt").write_text("the same words " * 50)
    rows = [{"text": f"row {i} " * 30} for i in range(40)] + [{"text": "row 0 " * 30}]
    (src / "c.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    m = build_text(tmp_path / "out", src=src, val_fraction=0.1, progress=False)
    assert m["counts"]["duplicates"] == 2
    assert m["counts"]["train"] + m["counts"]["val"] == 41


def test_builder_rejects_a_missing_source(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        build_text(tmp_path / "out", src=tmp_path / "nope", progress=False)


def test_windows_pack_the_token_stream_without_gaps(tiny_shards: Path, tiny_tokenizer: Path) -> None:
    urls = resolve_shards(str(tiny_shards), "val")
    batches = list(text_stream(tiny_shards, tiny_tokenizer, seq_len=16, batch_size=1))
    windows = [b["tokens"][0] for b in batches]
    assert len(windows) > 2 and all(w.shape == (17,) for w in windows)
    for a, b in itertools.pairwise(windows):  # each window's last label is the next one's first input
        assert a[-1] == b[0]
    # Together the windows are exactly the documents' tokens, each followed by <|endoftext|>.
    tok = Tokenizer(tiny_tokenizer)
    expected = [t for text in shard_texts(urls) for t in [*tok.encode(text), tok.eos_id]]
    flat = torch.cat([windows[0]] + [w[1:] for w in windows[1:]]).tolist()
    assert flat == expected[: len(flat)] and len(expected) - len(flat) < 17
    assert flat.count(tok.eos_id) >= 2
    assert all(b["loss_mask"].all() for b in batches)  # pure text: every target counts
    assert all(b["pixel_values"].shape[0] == 0 for b in batches)


def test_train_stream_is_endless_and_seeded(tiny_shards: Path, tiny_tokenizer: Path) -> None:
    def stream(seed: int) -> MixedStream:
        s = text_stream(tiny_shards, tiny_tokenizer, "train", seq_len=64, batch_size=8, shuffle_buffer=8)
        s.seed = seed
        return s

    for n, batch in enumerate(stream(0)):  # keeps going past the end of the shards
        if batch["meta"]["state"]["readers"]["text"]["epoch"] >= 1:
            break
        assert n < 10_000
    first = torch.stack([b["tokens"] for b in itertools.islice(iter(stream(0)), 10)])
    assert torch.equal(first, torch.stack([b["tokens"] for b in itertools.islice(iter(stream(0)), 10)]))
    assert not torch.equal(first, torch.stack([b["tokens"] for b in itertools.islice(iter(stream(1)), 10)]))
