"""Finding and checking WebDataset shards, with one-line errors and safe URLs."""

from __future__ import annotations

import json
import logging
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kimi_lab.errors import DataError

log = logging.getLogger(__name__)

TAR_MAGIC_OFFSET = 257
UNSAFE_PREFIXES = ("pipe:", "http://", "https://", "gs://", "s3://", "ais://")


def _expand(pattern: str) -> list[str]:
    from webdataset.shardlists import expand_urls

    return list(expand_urls(pattern))


def resolve_shards(
    path: str, split: str, key: str = "data.sources.<name>.path", allow_unsafe: bool = False
) -> list[str]:
    """The shard files of ``split`` under ``path`` (a folder, a .tar, or a brace pattern)."""
    if path.startswith(UNSAFE_PREFIXES) or "://" in path:
        if not allow_unsafe:
            raise DataError(
                f"{key}={path}: pipe: and remote URLs run commands or reach the network; "
                "set data.allow_unsafe_urls=true to allow them"
            )
        return _expand(path)
    p = Path(path)
    if "{" in path and "}" in path:
        urls = _expand(path)
    elif p.is_dir():
        urls = sorted(str(f) for f in p.glob(f"{split}-*.tar"))
        if not urls:
            raise DataError(
                f"{key}={path}: no {split}-*.tar shards in this folder (build them with `kimi-lab data build`)"
            )
    elif p.exists():
        urls = [str(p)]
    else:
        raise DataError(f"{key}={path}: no such file or folder (build shards with `kimi-lab data build`)")
    for url in urls:
        check_tar(url, key)
    return urls


def check_tar(url: str, key: str = "data.sources.<name>.path") -> None:
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


def read_first_record(urls: list[str]) -> dict[str, Any] | None:
    """The first ``.json`` record found in the shards (to learn a source's modality)."""
    for url in urls[:3]:
        try:
            with tarfile.open(url) as tar:
                for member in tar:
                    if member.isfile() and member.name.endswith(".json"):
                        f = tar.extractfile(member)
                        return json.loads(f.read()) if f else None
        except (tarfile.TarError, OSError, json.JSONDecodeError):
            continue
    return None


def iter_shard_samples(urls: Iterator[str], on_error: Any) -> Iterator[dict]:
    """WebDataset samples ({"__key__", "__url__", ext: bytes}) of the given shard stream.

    A corrupt shard or member goes to ``on_error`` (which counts it) and the stream moves on.
    """
    from webdataset.tariterators import tarfile_samples

    return tarfile_samples(({"url": u} for u in urls), handler=on_error)
