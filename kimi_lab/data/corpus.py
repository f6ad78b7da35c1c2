"""Real text that is already on every machine: the Python standard library.

Its modules (code with docstrings and comments) and pydoc's topic pages (English
prose) feed both the tokenizer and the default text shards. Files are visited in
sorted order, so the corpus, and everything built from it, is deterministic for
a given Python installation.
"""

from __future__ import annotations

import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SKIP_PARTS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "lib2to3"}


@dataclass(frozen=True)
class Document:
    text: str
    source: str  # corpus name, e.g. "python-stdlib"
    path: str  # where it came from, relative to the corpus root
    license: str = ""


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_documents(max_bytes: int | None = None) -> Iterator[Document]:
    """Modules of the standard library, then pydoc's topic pages; stops after ``max_bytes``."""
    root = stdlib_root()
    seen = 0
    files = sorted(p for p in root.rglob("*.py") if not SKIP_PARTS.intersection(p.relative_to(root).parts))
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if not text.strip():
            continue
        yield Document(text, "python-stdlib", str(path.relative_to(root)), "PSF-2.0")
        seen += len(text)
        if max_bytes is not None and seen >= max_bytes:
            return
    try:
        from pydoc_data.topics import topics
    except ImportError:  # pragma: no cover - stripped Python builds
        return
    for name in sorted(topics):
        yield Document(topics[name], "python-docs", f"pydoc_data/topics/{name}", "PSF-2.0")
