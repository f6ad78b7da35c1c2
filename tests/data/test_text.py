"""Text shards: builder, packing, and bad input (missing, empty, corrupt shards)."""

from __future__ import annotations

import io
import itertools
import json
import tarfile
from pathlib import Path

import pytest
import torch

from data_pipelines.text import build_text
from kimi_lab.config.schema import DataConfig
from kimi_lab.data.shards import resolve_shards
from kimi_lab.data.text import PackedTextStream, TextDataModule
from kimi_lab.data.tokenizer import Tokenizer
from kimi_lab.errors import DataError


def test_builder_writes_split_shards_and_manifest(tiny_shards: Path) -> None:
    manifest = json.loads((tiny_shards / "manifest.json").read_text())
    assert manifest["counts"]["train"] > 0 and manifest["counts"]["val"] > 0
    assert manifest["shards"]["train"] == sorted(p.name for p in tiny_shards.glob("train-*.tar"))
    with tarfile.open(tiny_shards / manifest["shards"]["train"][0]) as tar:
        names = tar.getnames()
        record = json.loads(tar.extractfile(next(n for n in names if n.endswith(".json"))).read())
    assert record["schema_version"] == 1 and record["modality"] == "text"
    assert record["source"] in ("python-stdlib", "python-docs") and record["provenance"]["path"]


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
    windows = list(PackedTextStream(urls, str(tiny_tokenizer), seq_len=16, train=False))
    assert len(windows) > 2 and all(w.shape == (17,) for w in windows)
    for a, b in itertools.pairwise(windows):  # each window's last label is the next one's first input
        assert a[-1] == b[0]
    # Together the windows are exactly the documents' tokens, each followed by <|endoftext|>.
    tok = Tokenizer(tiny_tokenizer)
    expected = [t for text in _texts(urls) for t in [*tok.encode(text), tok.eos_id]]
    flat = torch.cat([windows[0]] + [w[1:] for w in windows[1:]]).tolist()
    assert flat == expected[: len(flat)] and len(expected) - len(flat) < 17
    assert flat.count(tok.eos_id) >= 2
    again = list(PackedTextStream(urls, str(tiny_tokenizer), 16, train=False, max_windows=5))
    assert all(torch.equal(a, b) for a, b in zip(again, windows[:5])) and len(again) == 5


def test_train_stream_is_endless_and_seeded(tiny_shards: Path, tiny_tokenizer: Path) -> None:
    urls = resolve_shards(str(tiny_shards), "train")
    total_tokens = sum(len(Tokenizer(tiny_tokenizer).encode(t)) for t in _texts(urls))
    n = total_tokens // 8 + 50  # more windows than one pass holds
    make = lambda seed: PackedTextStream(
        urls, str(tiny_tokenizer), 8, train=True, seed=seed, shuffle_buffer=8
    )  # noqa: E731
    first = list(itertools.islice(iter(make(0)), n))
    assert len(first) == n
    assert torch.equal(torch.stack(first[:10]), torch.stack(list(itertools.islice(iter(make(0)), 10))))
    assert not torch.equal(torch.stack(first[:10]), torch.stack(list(itertools.islice(iter(make(1)), 10))))


def _texts(urls: list[str]) -> list[str]:
    out = []
    for url in urls:
        with tarfile.open(url) as tar:
            out += [tar.extractfile(m).read().decode() for m in tar if m.name.endswith(".txt")]
    return out


def test_datamodule_batches(tiny_shards: Path, tiny_tokenizer: Path) -> None:
    cfg = DataConfig(
        path=str(tiny_shards), tokenizer=str(tiny_tokenizer), seq_len=16, batch_size=3, val_batches=2
    )
    dm = TextDataModule(cfg, vocab_size=512)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["tokens"].shape == (3, 17) and batch["tokens"].dtype == torch.long
    assert len(list(dm.val_dataloader())) == 2


@pytest.mark.parametrize("kind", ["missing", "empty_dir", "not_tar", "empty_file"])
def test_bad_paths_are_one_line_errors_naming_the_path(tmp_path: Path, kind: str) -> None:
    if kind == "missing":
        path = tmp_path / "nowhere"
    elif kind == "empty_dir":
        path = tmp_path / "empty"
        path.mkdir()
    elif kind == "not_tar":
        path = tmp_path / "bad.tar"
        path.write_bytes(b"this is not a tar archive at all" * 40)
    else:
        path = tmp_path / "zero.tar"
        path.write_bytes(b"")
    with pytest.raises(DataError) as err:
        resolve_shards(str(path), "train")
    message = str(err.value)
    assert str(path) in message and "\n" not in message


def test_corrupt_shard_is_a_counted_skip(tiny_shards: Path, tiny_tokenizer: Path, tmp_path: Path) -> None:
    good = sorted(tiny_shards.glob("val-*.tar"))[0]
    data = good.read_bytes()
    broken = tmp_path / "broken.tar"
    broken.write_bytes(data[: len(data) // 2] + b"\x00garbage" * 100)  # valid start, corrupt tail
    stream = PackedTextStream([str(broken), str(good)], str(tiny_tokenizer), 16, train=False)
    windows = list(stream)
    assert windows, "the good shard is still read after the broken one"
    assert stream.skipped.count >= 1


def test_shards_without_any_readable_sample_fail_clearly(tmp_path: Path, tiny_tokenizer: Path) -> None:
    empty_tar = tmp_path / "train-000000.tar"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("x.json")
        payload = b"{}"
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    empty_tar.write_bytes(buf.getvalue())
    stream = PackedTextStream([str(empty_tar)], str(tiny_tokenizer), 16, train=True)
    with pytest.raises(DataError):
        next(iter(stream))
