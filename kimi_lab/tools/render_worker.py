"""Model-written SVG and HTML, rendered in a sandboxed process that can be killed: what rewards use.

A policy's code may loop forever, allocate without end, or try to reach the network or the
host's files, so it never renders in the training process. ``PageRenderer`` starts this module
as a child process inside the code tool's bubblewrap sandbox (``tools.bwrap``: fresh namespaces
of every kind, so no network at all, user namespaces disabled inside, a fresh uid on a root host;
read-only binds of the interpreter, the package and the fonts; private ``/tmp`` and ``/dev/shm``),
keeps it and its Chromium open for many pages, and gives every page a wall-clock budget and a
memory budget (the resident memory of the child and everything it started, polled; each process
also has RLIMIT_DATA at that budget). A page over either budget, or one that crashes the
renderer, comes back as ``None`` and the process is killed, to be restarted for the next page:
nothing a page does raises in the caller. A sandbox that cannot start is ``RenderUnavailable``,
said once, never bypassed.

Protocol on the child's stdin / stdout: the child writes ``READY`` once Chromium runs; then per
page a JSON line ``{"kind", "code", "width", "height", "times", "timeout_ms"}`` in, and a JSON line
``{"ok", "sizes", "structure", "error"}`` out followed by the PNG bytes of the frames.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from kimi_lab.errors import KimiLabError
from kimi_lab.tools.bwrap import BWRAP, bwrap_command
from kimi_lab.tools.renderers import HtmlRenderer, PageCapture, render_svg, svg_structure

log = logging.getLogger(__name__)

READY = b"kimi-render-ready\n"
PACKAGE = (
    Path(__file__).resolve().parents[1]
)  # kimi_lab/ itself: the sandbox sees no other file of a checkout
PACKAGE_DEST = "/kimi_lab_src"  # where the sandbox sees it (as PACKAGE_DEST/kimi_lab), first on sys.path
INSTALL_HINT = "apt-get install -y bubblewrap chromium"
READ_ONLY = (
    "/etc/fonts",  # the fonts the data builders render with
    "/var/cache/fontconfig",
    "/etc/chromium",  # Debian's chromium launcher reads its settings here
    "/etc/chromium.d",
)


class RenderUnavailable(KimiLabError):
    """The sandboxed renderer cannot start here (bwrap or chromium missing, namespaces refused)."""


@dataclass(frozen=True)
class RenderLimits:
    wall_s: float = 20.0  # one page, all its frames
    start_s: float = 90.0  # starting the process and its Chromium
    # resident memory of the process tree, and each process's RLIMIT_DATA (Chromium idles at a few hundred)
    memory_mb: int = 2048
    js_heap_mb: int = 256  # each page's JavaScript heap
    max_code_chars: int = 50_000
    max_side: int = 1024  # CSS pixels of the viewport (SVG: of the output)
    max_frames: int = 32


class PageRenderer:
    """``with PageRenderer() as r: r.render("html", code, w, h, [0, 250])``: a ``PageCapture`` or None."""

    def __init__(self, limits: RenderLimits = RenderLimits()) -> None:
        self.limits = limits
        self.proc: subprocess.Popen | None = None
        self.last_error = ""  # why the latest page gave None
        self.restarts = 0  # starts of the render process (the first included)

    def __enter__(self) -> PageRenderer:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            for stream in (self.proc.stdin, self.proc.stdout):
                if stream is not None:
                    stream.close()
            self.proc = None

    def render(
        self, kind: str, code: str, width: int, height: int, times_ms: Sequence[int]
    ) -> PageCapture | None:
        """The page's frames at ``times_ms`` (an SVG: its one picture, per time) and structure; None
        if it did not render within the limits. Raises only ``RenderUnavailable``."""
        lim = self.limits
        self.last_error = ""
        times = [int(t) for t in times_ms]
        if (
            kind not in ("svg", "html")
            or not isinstance(code, str)
            or len(code) > lim.max_code_chars
            or not (0 < width <= lim.max_side and 0 < height <= lim.max_side)
            or not (0 < len(times) <= lim.max_frames)
            or any(t < 0 for t in times)
            or times != sorted(times)
        ):
            self.last_error = "refused: bad kind, size, frame times or code length"
            return None
        if not self._start():
            return None
        assert self.proc is not None and self.proc.stdin is not None
        request = {
            "kind": kind,
            "code": code,
            "width": width,
            "height": height,
            "times": times,
            "timeout_ms": int(lim.wall_s * 500),  # the page's own failures come back before the kill
        }
        try:
            self.proc.stdin.write(json.dumps(request).encode() + b"\n")
            self.proc.stdin.flush()
        except OSError as exn:
            return self._fail(f"the render process is gone ({exn})")
        reply = self._read_reply(time.monotonic() + lim.wall_s + 2.0)
        if reply is None:
            return None
        header, blobs = reply
        if not header.get("ok"):
            self.last_error = str(header.get("error", "render failed"))[:300]
            return None
        out, offset = [], 0
        for size in header["sizes"]:
            out.append(blobs[offset : offset + size])
            offset += size
        structure = header.get("structure")
        return PageCapture(out, structure if isinstance(structure, dict) else {"tags": {}, "text": ""})

    # ------------------------------------------------------------------ process
    def _start(self) -> bool:
        """A running render process; raises when the very first start fails (this machine cannot
        sandbox the renderer), else a failed restart is one page that did not render."""
        if self.proc is not None and self.proc.poll() is None:
            return True
        self.close()
        try:
            self._launch()
        except RenderUnavailable as exn:
            if not self.restarts:
                raise
            self.last_error = str(exn)
            log.warning("the render process did not restart: %s", exn)
            return False
        self.restarts += 1
        return True

    def _launch(self) -> None:
        argv = sandbox_argv(self.limits)
        try:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # one process group to kill
                env={},
            )
        except OSError as exn:
            raise RenderUnavailable(f"cannot start bubblewrap: {exn}; install it: {INSTALL_HINT}") from None
        got = self._read(len(READY), time.monotonic() + self.limits.start_s)
        if got != READY:
            self.close()
            raise RenderUnavailable(
                "the sandboxed renderer did not start (bubblewrap needs user namespaces, chromium "
                f"must be installed: {INSTALL_HINT})"
            )

    def _fail(self, why: str) -> None:
        self.last_error = why
        self.close()

    def _read_reply(self, deadline: float) -> tuple[dict, bytes] | None:
        line = self._read_line(deadline)
        if line is None:
            return None
        try:
            header = json.loads(line)
            total = sum(int(s) for s in header.get("sizes", []))
        except (ValueError, TypeError):
            return self._fail("malformed reply from the render process")
        blobs = self._read(total, deadline) if total else b""
        if blobs is None:
            return None
        return header, blobs

    def _read_line(self, deadline: float) -> bytes | None:
        buf = bytearray()
        while not buf.endswith(b"\n"):
            chunk = self._read(1, deadline)
            if chunk is None:
                return None
            buf += chunk
        return bytes(buf)

    def _read(self, n: int, deadline: float) -> bytes | None:
        """Exactly n bytes of the child's stdout, or None (and the child killed) when the page runs
        past its deadline or the process tree past its memory."""
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        buf = bytearray()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while len(buf) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    return self._fail(f"timed out after {self.limits.wall_s} s")
                if tree_rss_mb(self.proc.pid) > self.limits.memory_mb:
                    return self._fail(f"memory limit of {self.limits.memory_mb} MB exceeded")
                if sel.select(min(left, 0.2)):
                    chunk = os.read(fd, n - len(buf))
                    if not chunk:
                        return self._fail("the render process died")
                    buf += chunk
        return bytes(buf)


def render_unavailable_reason() -> str | None:
    """None when the sandboxed renderer works here, else one line saying why."""
    renderer = PageRenderer()
    try:
        got = renderer.render("html", "<html><body>ok</body></html>", 32, 32, [0])
    except RenderUnavailable as exn:
        return str(exn)
    finally:
        renderer.close()
    return (
        None
        if got is not None
        else f"the sandboxed renderer starts but does not render: {renderer.last_error}"
    )


def tree_rss_mb(root: int) -> float:
    """Resident memory (MB) of a process and all its descendants, from /proc."""
    return sum(rss for _, rss in _tree(root)) / 1024


def tree_pids(root: int) -> list[int]:
    """A process and all its descendants (those alive now)."""
    return [pid for pid, _ in _tree(root)]


def _tree(root: int) -> list[tuple[int, int]]:
    """(pid, resident KB) of a process and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    page_kb = os.sysconf("SC_PAGE_SIZE") // 1024
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # it ended while we looked
            continue
        pid = int(entry)
        children.setdefault(int(fields[1]), []).append(pid)  # fields[1]: the parent's pid
        rss[pid] = int(fields[21]) * page_kb  # fields[21]: resident pages
    out, stack = [], [root]
    while stack:
        pid = stack.pop()
        if pid in rss:
            out.append((pid, rss[pid]))
        stack.extend(children.get(pid, []))
    return out


def sandbox_argv(limits: RenderLimits) -> list[str]:
    """This module's worker in the code tool's sandbox: read-only interpreter, package and fonts;
    ``/tmp`` (HOME, Chromium's profile) and ``/dev/shm`` (its shared memory) tmpfs of the memory
    budget. The worker imports the package that started it, whatever an install points to."""
    bwrap = shutil.which(BWRAP)
    if bwrap is None:
        raise RenderUnavailable(f"bubblewrap ({BWRAP!r}) is not installed; install it: {INSTALL_HINT}")
    trees = [os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix)]
    trees += [p for p in READ_ONLY if os.path.isdir(p)]
    binds = [(t, t) for t in dict.fromkeys(trees) if not (t == "/usr" or t.startswith("/usr/"))]
    binds.append((str(PACKAGE), f"{PACKAGE_DEST}/kimi_lab"))
    size = limits.memory_mb << 20
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8"}
    start = (
        f"import runpy, sys; sys.path.insert(0, {PACKAGE_DEST!r}); "
        "runpy.run_module('kimi_lab.tools.render_worker', run_name='__main__', alter_sys=True)"
    )
    # sys.executable, the venv's own path, bound where it is: it finds its site-packages
    inner = [sys.executable, "-I", "-c", start, str(limits.js_heap_mb), str(limits.memory_mb)]
    return bwrap_command(bwrap, inner, binds, env, [("/tmp", size), ("/dev/shm", size)], "/tmp")


# ------------------------------------------------------------------------ the child
def _limit_memory(memory_mb: int) -> None:
    """RLIMIT_DATA (private writable memory) at the budget, for this process and Chromium's.
    Not RLIMIT_AS: V8 reserves a terabyte of address space (its sandbox) and fails to start
    under any address-space limit near the budget, whereas its reservations are not data; Chromium
    limits its own renderers' data the same way. It is per process, so the tree is polled too."""
    import resource

    cap = memory_mb << 20
    resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _serve(js_heap_mb: int, memory_mb: int) -> None:
    _limit_memory(memory_mb)
    out = sys.stdout.buffer
    with HtmlRenderer(js_heap_mb=js_heap_mb) as renderer:
        out.write(READY)
        out.flush()
        for line in sys.stdin.buffer:
            page = PageCapture([], {})
            error = ""
            try:
                req = json.loads(line)
                w, h, times = int(req["width"]), int(req["height"]), list(req["times"])
                if req["kind"] == "svg":
                    png = render_svg(req["code"], width=w, height=h)
                    page = PageCapture([png] * len(times), svg_structure(req["code"]))
                else:
                    page = renderer.capture(req["code"], w, h, times, int(req["timeout_ms"]))
            except Exception as exn:  # the page's fault: a failed page, not a dead worker
                error = f"{type(exn).__name__}: {exn}"
            pngs = page.frames
            header = {
                "ok": not error,
                "sizes": [len(p) for p in pngs],
                "structure": page.structure,
                "error": error,
            }
            out.write(json.dumps(header).encode() + b"\n" + b"".join(pngs))
            out.flush()
            if error and not renderer.connected:
                return  # the browser itself died: the parent restarts the process


if __name__ == "__main__":
    _serve(int(sys.argv[1]), int(sys.argv[2]))
