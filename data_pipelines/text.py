"""``kimi-lab data build text``: deduplicated text shards with a train/val split and a manifest.

Sources: the Python standard library (the tokenizer's corpus, on every machine)
and, with ``--src DIR``, a user's own .txt / .jsonl / .parquet files. Documents
are deduplicated by content hash; a document goes to val when its hash falls in
the val fraction, so the split is stable however the sources are ordered.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from collections.abc import Iterator
from pathlib import Path

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


def build_text(
    out: str | Path,
    n: int | None = None,
    seed: int = 0,
    src: str | Path | None = None,
    val_fraction: float = 0.02,
    shard_bytes: int = 1_000_000,
    progress: bool = True,
) -> dict:
    """Write ``train-*.tar`` and ``val-*.tar`` under ``out`` and return the manifest."""
    import webdataset as wds
    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for old in list(out.glob("train-*.tar")) + list(out.glob("val-*.tar")):
        old.unlink()  # a rebuild replaces the previous shards, never mixes with them
    docs: Iterator[Document] = user_documents(Path(src)) if src is not None else stdlib_documents()
    rng = random.Random(seed)
    seen: set[str] = set()
    counts = {"train": 0, "val": 0, "duplicates": 0, "empty": 0}
    nbytes = {"train": 0, "val": 0}
    writers = {
        split: wds.ShardWriter(
            str(out / f"{split}-%06d.tar"), maxsize=shard_bytes, maxcount=100_000, verbose=0
        )
        for split in ("train", "val")
    }
    # Keep an order that is stable but not alphabetical, so shards mix sources.
    all_docs = list(docs)
    rng.shuffle(all_docs)
    if n is not None:
        all_docs = all_docs[:n]
    try:
        for doc in tqdm(all_docs, desc="text shards", unit="doc", disable=not progress):
            text = doc.text.strip()
            if not text:
                counts["empty"] += 1
                continue
            data = text.encode("utf-8")
            key = sample_key(doc.source, data)
            if key in seen:
                counts["duplicates"] += 1
                continue
            seen.add(key)
            bucket = int(hashlib.sha1(data).hexdigest()[:8], 16) / 0xFFFFFFFF
            split = "val" if bucket < val_fraction else "train"
            record = make_record("text", doc.source, path=doc.path, license=doc.license, chars=len(text))
            writers[split].write({"__key__": key, "txt": data, "json": json.dumps(record).encode()})
            counts[split] += 1
            nbytes[split] += len(data)
    finally:
        for w in writers.values():
            w.close()
    if counts["train"] == 0:
        raise DataError(f"no training documents were written to {out} (all empty or duplicates)")
    if counts["val"] == 0:  # tiny corpora: make sure validation has something
        log.warning("no document fell in the val fraction; validation will be disabled for %s", out)
        for f in out.glob("val-*.tar"):
            f.unlink()
    manifest = {
        "builder": BUILDER_VERSION,
        "kind": "text",
        "seed": seed,
        "source": str(src) if src is not None else "python-stdlib",
        "counts": counts,
        "bytes": nbytes,
        "shards": {split: sorted(p.name for p in out.glob(f"{split}-*.tar")) for split in ("train", "val")},
    }
    tmp = out / f".manifest.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, out / "manifest.json")
    return manifest
