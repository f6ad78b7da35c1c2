"""Finding, checking and reading WebDataset shards, with one-line errors and counted skips."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from kimi_lab.errors import DataError

log = logging.getLogger(__name__)

TAR_MAGIC_OFFSET = 257


def _expand(pattern: str) -> list[str]:
    from webdataset.shardlists import expand_urls

    return list(expand_urls(pattern))


def resolve_shards(path: str, split: str, key: str = "data.path") -> list[str]:
    """The shard files of ``split`` under ``path`` (a folder, a .tar, or a brace pattern)."""
    p = Path(path)
    if "{" in path and "}" in path:
        urls = _expand(path)
    elif p.is_dir():
        urls = sorted(str(f) for f in p.glob(f"{split}-*.tar"))
        if not urls:
            raise DataError(
                f"{key}={path}: no {split}-*.tar shards in this folder "
                f"(build them with `kimi-lab data build text --out {path}`)"
            )
    elif p.exists():
        urls = [str(p)]
    else:
        raise DataError(
            f"{key}={path}: no such file or folder (build shards with `kimi-lab data build text --out {path}`)"
        )
    for url in urls:
        check_tar(url, key)
    return urls


def check_tar(url: str, key: str = "data.path") -> None:
    """Cheap sanity check: the file exists, is not empty, and starts like a tar archive."""
    p = Path(url)
    if not p.is_file():
        raise DataError(f"{key}: shard {url} does not exist")
    with p.open("rb") as f:
        head = f.read(512)
    if len(head) < 512:
        raise DataError(f"{key}: shard {url} is empty or truncated ({len(head)} bytes)")
    if head[TAR_MAGIC_OFFSET : TAR_MAGIC_OFFSET + 5] != b"ustar":
        raise DataError(f"{key}: shard {url} is not a tar archive (corrupt or wrong file)")


class SkipCounter:
    """Counts samples and shards that could not be read, logging the first few of each kind."""

    def __init__(self, log_first: int = 5) -> None:
        self.count = 0
        self.log_first = log_first

    def __call__(self, exn: Exception) -> bool:
        self.count += 1
        if self.count <= self.log_first:
            log.warning("skipped unreadable data (%d so far): %s", self.count, exn)
        return True  # keep going


def iter_shard_samples(urls: Iterator[str], on_error: SkipCounter) -> Iterator[dict]:
    """WebDataset samples ({"__key__", "__url__", ext: bytes}) of the given shard stream.

    A corrupt shard or member is a counted skip, not a crash: the stream moves on.
    """
    from webdataset.tariterators import tarfile_samples

    return tarfile_samples(({"url": u} for u in urls), handler=on_error)
