"""Swarm traces: one JSON event per line, in the schema of ``kimi_lab.metrics`` (SWARM_*).

``{"v": 1, "t": seconds since the episode began, "step": critical steps so far,
"agent": "orchestrator" | NAME, "kind": spawn|assign|tool_call|tool_result|message|finish|error,
"parent": AGENT | null, "detail": {...}}``

Every line is flushed as it is written, so a crashed run still leaves a readable
trace; ``close()`` always ends the trace with the orchestrator's ``finish`` (after
an ``error`` event when the episode did not finish it itself).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from kimi_lab import metrics as M

PREVIEW_CHARS = 200  # texts in trace details are previews, not full transcripts


def preview(text: str, limit: int = PREVIEW_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + f"... [{len(text)} chars]"


class TraceWriter:
    """Writes one episode's events to ``path`` (JSONL), its parent folder created."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = self.path.open("w", encoding="utf-8")
        self.t0 = time.perf_counter()
        self.step = 0  # the runtime keeps this at the critical steps used so far
        self.events = 0
        self.finished = False  # the orchestrator's finish event was written
        self.closed = False

    def start(self) -> None:
        """Times count from now (the runtime calls this as its episode begins)."""
        self.t0 = time.perf_counter()

    def emit(
        self,
        agent: str,
        kind: str,
        detail: dict[str, Any] | None = None,
        parent: str | None = None,
        step: int | None = None,
    ) -> None:
        if self.closed:
            return
        if kind not in M.SWARM_EVENT_KINDS:
            raise ValueError(f"unknown swarm event kind {kind!r} (one of {', '.join(M.SWARM_EVENT_KINDS)})")
        event = {
            "v": M.SWARM_TRACE_VERSION,
            "t": round(time.perf_counter() - self.t0, 6),
            "step": self.step if step is None else step,
            "agent": agent,
            "kind": kind,
            "parent": parent,
            "detail": detail or {},
        }
        # default=str: a detail value that JSON cannot hold must not lose the event
        self._f.write(json.dumps(event, default=str) + "\n")
        self._f.flush()
        self.events += 1
        if agent == M.SWARM_ORCHESTRATOR and kind == "finish":
            self.finished = True

    def close(self) -> None:
        """End the trace; one left without the orchestrator's finish gets an error and a finish."""
        if self.closed:
            return
        try:
            if not self.finished:
                self.emit(M.SWARM_ORCHESTRATOR, "error", {"error": "the episode ended without finishing"})
                self.emit(M.SWARM_ORCHESTRATOR, "finish", {"status": "aborted"})
        finally:
            self.closed = True
            self._f.close()

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
