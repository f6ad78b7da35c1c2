"""The page renderer runs in the code tool's sandbox (``tools.bwrap``): a fresh uid on a root host,
and every process of it, Chromium's included, under the memory budget's RLIMIT_DATA."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kimi_lab.tasks.code_rewards import shared_renderer
from kimi_lab.tools.render_worker import RenderUnavailable, tree_pids


def _status(pid: int, key: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return line.split(":", 1)[1].split()[0]
    raise KeyError(key)


def _data_limit(pid: int) -> str:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max data size"):
            return line.split()[3]  # the soft limit: a number or "unlimited"
    raise KeyError("Max data size")


def test_the_renderer_and_its_chromium_run_as_a_fresh_uid_under_the_memory_budget() -> None:
    renderer = shared_renderer()  # the process's one render worker (the reward tests share it)
    try:
        page = renderer.render("html", "<!DOCTYPE html><html><body>x</body></html>", 32, 32, [0])
    except RenderUnavailable as exn:
        pytest.skip(f"no sandboxed renderer here: {exn}")
    assert page is not None and renderer.proc is not None
    pids = tree_pids(renderer.proc.pid)
    commands = {pid: Path(f"/proc/{pid}/cmdline").read_bytes() for pid in pids}
    assert any(b"chrom" in c for c in commands.values())  # Chromium is in the tree
    # bwrap itself (and, as root, the launcher it was) runs outside; the worker and Chromium inside
    inside = [pid for pid, c in commands.items() if os.path.basename(c.split(b"\0")[0]) != b"bwrap"]
    if os.geteuid() == 0:  # root's sandbox drops to a fresh uid, as the code tool's does
        assert all(_status(pid, "Uid") != "0" for pid in pids)
    budget = str(renderer.limits.memory_mb << 20)
    assert len(inside) > 1 and all(_data_limit(pid) == budget for pid in inside)
