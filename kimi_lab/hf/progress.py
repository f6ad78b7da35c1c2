"""Progress of a streamed import or export, in bytes: a bar on a terminal, a line every 30 s otherwise."""

from __future__ import annotations

import sys
import time
from typing import Any


class _Lines:
    """Progress without a terminal: one line every ``every`` seconds (an import of K2 takes hours)."""

    def __init__(self, total: int, desc: str, every: float = 30.0) -> None:
        self.total, self.desc, self.every = total, desc, every
        self.done, self.last = 0, time.monotonic()

    def update(self, n: int) -> None:
        self.done += n
        if time.monotonic() - self.last >= self.every:
            self.last = time.monotonic()
            pct = 100 * self.done / max(1, self.total)
            print(
                f"{self.desc}: {self.done / 1e9:,.2f} / {self.total / 1e9:,.2f} GB ({pct:.1f}%)",
                file=sys.stderr,
            )

    def close(self) -> None:
        pass


def byte_progress(total_bytes: int, desc: str) -> Any:
    """A progress bar on a terminal, a line every 30 s otherwise."""
    if not sys.stderr.isatty():
        return _Lines(total_bytes, desc)
    from tqdm import tqdm

    return tqdm(total=total_bytes, unit="B", unit_scale=True, desc=desc, file=sys.stderr, mininterval=2.0)
