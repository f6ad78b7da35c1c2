"""``kimi-lab data build text``: deduplicated text shards with a train/val split and a manifest.

Sources: the Python standard library (the tokenizer's corpus, on every machine)
and, with ``--src DIR``, a user's own .txt / .jsonl / .parquet files. Documents
are deduplicated by content hash and cut into pieces of at most ``max_chars`` at
paragraph boundaries; a document's pieces share its train/val split (key hash).
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator
from pathlib import Path

from data_pipelines.common import ShardSink
from kimi_lab.data.corpus import Document, stdlib_documents
from kimi_lab.data.schema import make_record, sample_key
from kimi_lab.errors import DataError

log = logging.getLogger(__name__)

BUILDER_VERSION = "text/1"
TEXT_SUFFIXES = (".txt", ".jsonl", ".parquet")


def _jsonl_texts(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exn:
                raise DataError(f"{path}:{lineno}: not JSON ({exn.msg})") from None
            text = row.get("text") if isinstance(row, dict) else None
            if isinstance(text, str):
                yield text


def _parquet_texts(path: Path) -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path, columns=["text"])
    except Exception as exn:  # pyarrow raises several types for bad files / missing columns
        raise DataError(f"{path}: cannot read a 'text' column ({exn})") from None
    for text in table.column("text").to_pylist():
        if isinstance(text, str):
            yield text


def user_documents(src: Path) -> Iterator[Document]:
    """Documents from every .txt (one per file), .jsonl and .parquet (a "text" field per row) under src."""
    if not src.exists():
        raise DataError(f"--src {src}: no such file or folder")
    files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.suffix in TEXT_SUFFIXES)
    if not files:
        raise DataError(f"--src {src}: no {', '.join(TEXT_SUFFIXES)} files found")
    for path in files:
        rel = str(path.relative_to(src)) if src.is_dir() else path.name
        if path.suffix == ".txt":
            yield Document(path.read_text(encoding="utf-8", errors="replace"), "user", rel)
        elif path.suffix == ".jsonl":
            for i, text in enumerate(_jsonl_texts(path)):
                yield Document(text, "user", f"{rel}#{i}")
        else:
            for i, text in enumerate(_parquet_texts(path)):
                yield Document(text, "user", f"{rel}#{i}")


def chunks(text: str, max_chars: int) -> list[str]:
    """Split a long document at paragraph (else line) boundaries into pieces of <= max_chars.

    Long documents in one piece would make the source mixer coarse: one module of
    the standard library can outweigh hundreds of captions.
    """
    if len(text) <= max_chars:
        return [text]
    pieces: list[str] = []
    current = ""
    for para in text.split("\n\n"):
        parts = (
            [para]
            if len(para) <= max_chars
            else [p for line in para.split("\n") for p in _hard_split(line, max_chars)]
        )
        for part in parts:
            sep = "\n\n" if part is para else "\n"
            if current and len(current) + len(sep) + len(part) > max_chars:
                pieces.append(current)
                current = part
            else:
                current = f"{current}{sep}{part}" if current else part
    if current:
        pieces.append(current)
    return pieces


def _hard_split(line: str, max_chars: int) -> list[str]:
    return [line[i : i + max_chars] for i in range(0, max(len(line), 1), max_chars)]


def build_text(
    out: str | Path,
    n: int | None = None,
    seed: int = 0,
    src: str | Path | None = None,
    val_fraction: float = 0.02,
    shard_bytes: int = 1_000_000,
    progress: bool = True,
    max_chars: int = 4000,
) -> dict:
    """Write ``train-*.tar`` and ``val-*.tar`` under ``out`` and return the manifest."""
    from tqdm import tqdm

    docs: Iterator[Document] = user_documents(Path(src)) if src is not None else stdlib_documents()
    # Keep an order that is stable but not alphabetical, so shards mix sources.
    all_docs = list(docs)
    random.Random(seed).shuffle(all_docs)
    if n is not None:
        all_docs = all_docs[:n]
    sink = ShardSink(out, val_fraction, shard_bytes)
    for what in ("documents", "duplicates", "empty"):
        sink.count(what, 0)
    seen: set[str] = set()
    try:
        for doc in tqdm(all_docs, desc="text shards", unit="doc", disable=not progress):
            text = doc.text.strip()
            if not text:
                sink.count("empty")
                continue
            data = text.encode("utf-8")
            key = sample_key(doc.source, data)
            if key in seen:
                sink.count("duplicates")
                continue
            seen.add(key)
            sink.count("documents")
            # All pieces of a document go to the split of the whole document.
            split = sink.split_of(key)
            for i, piece in enumerate(chunks(text, max_chars)):
                record = make_record(
                    "text",
                    doc.source,
                    path=doc.path,
                    license=doc.license,
                    chars=len(piece),
                    piece=i,
                    document=key,
                )
                sink.write(
                    {
                        "__key__": f"{key}-{i:04d}",
                        "txt": piece.encode("utf-8"),
                        "json": json.dumps(record).encode(),
                    },
                    split,
                )
    finally:
        manifest = sink.close(
            "text", "text", seed, BUILDER_VERSION, source=str(src) if src is not None else "python-stdlib"
        )
    if manifest["counts"]["train"] == 0:
        raise DataError(f"no training documents were written to {out} (all empty or duplicates)")
    return manifest
