"""The process inside the sandbox: load the job, run the model's code, report the result.

Started by ``kimi_lab.tools.sandbox`` as ``python -I -S -B -u sandbox_runner.py RESULT_FD`` inside
bubblewrap, with the working directory (a small tmpfs) as cwd. It imports only the stdlib at module
level (the interpreter runs without ``site``); numpy and PIL come from the job's ``sys_path``.

Protocol, both directions "one JSON header line, then the raw blobs it lists":
  stdin      the job: ``{"code", "sys_path", "workdir", "limits", "files": [[name, size]],
             "images": [{"size", "shape"}]}``; ``shape`` is ``[h, w, 3]`` for raw uint8 RGB pixels
             and ``null`` for encoded image bytes.
  RESULT_FD  ``READY`` as soon as the runner starts (so the host can tell "sandbox did not start"
             from "code crashed"), later one message ``{"status", "error", "notes",
             "images": [[name, size]]}`` + PNG blobs, closed by a trailer (``MAGIC``, message
             length). The user's code can write to this fd too; the host takes the message the
             trailer at the very end points to, and the runner's is always last (it ``os._exit``s
             right after writing it, so no user ``atexit`` code runs later).
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import gc
import io
import json
import linecache
import os
import resource
import signal
import stat
import struct
import sys
import traceback
import types
from typing import Any

READY = b"kimi-sandbox-ready\n"
MAGIC = b"KIMIRSLT"
TRAILER = struct.Struct("<8sQ")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp")
FILENAME = "<tool>"
MAX_SCAN = 10_000  # files looked at when collecting output images
RESERVE_BYTES = 8 << 20  # freed on MemoryError so the runner can still report
IMAGE_OVERSIZE = 4  # images up to this many times image_pixels are downscaled, bigger ones skipped

_PROCESSES = "creating processes"
_NETWORK = "network access"
_NATIVE = "loading native code (ctypes)"
FORBIDDEN_EVENTS = {
    "os.system": _PROCESSES,
    "os.exec": _PROCESSES,
    "os.posix_spawn": _PROCESSES,
    "os.fork": _PROCESSES,
    "os.forkpty": _PROCESSES,
    "subprocess.Popen": _PROCESSES,
    "socket.connect": _NETWORK,
    "socket.bind": _NETWORK,
    "socket.sendto": _NETWORK,
    "socket.sendmsg": _NETWORK,
    "ctypes.dlopen": _NATIVE,
    "ctypes.dlsym": _NATIVE,
    "ctypes.dlsym/handle": _NATIVE,
}


class Forbidden(PermissionError):
    """Raised by the audit hook; the kernel limits stay the real boundary, this gives a clear message."""


def _audit(event: str, args: tuple[Any, ...]) -> None:
    what = FORBIDDEN_EVENTS.get(event)
    if what is not None:
        raise Forbidden(f"forbidden: {what} is not allowed in the sandbox ({event})")


def _read_job() -> tuple[dict[str, Any], list[bytes]]:
    """The job header and its blobs (files, then images) from stdin, which the code then sees empty."""
    data = sys.stdin.buffer.read()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    line, _, rest = data.partition(b"\n")
    job = json.loads(line)
    sizes = [size for _, size in job["files"]] + [spec["size"] for spec in job["images"]]
    blobs, offset = [], 0
    for size in sizes:
        blobs.append(rest[offset : offset + size])
        offset += size
    return job, blobs


def _load_inputs(job: dict[str, Any], blobs: list[bytes]) -> list[Any]:
    """Write the files and images into the working dir; return the images as uint8 RGB arrays."""
    import numpy as np
    from PIL import Image

    for (name, _), blob in zip(job["files"], blobs):
        with open(name, "wb") as f:
            f.write(blob)
    arrays = []
    for i, (spec, blob) in enumerate(zip(job["images"], blobs[len(job["files"]) :])):
        if spec["shape"] is not None:
            array = np.frombuffer(blob, dtype=np.uint8).reshape(spec["shape"]).copy()
        else:
            with Image.open(io.BytesIO(blob)) as im:
                array = np.asarray(im.convert("RGB")).copy()
        Image.fromarray(array).save(f"image_{i}.png", compress_level=1)
        arrays.append(array)
    return arrays


def _snapshot(root: str) -> dict[str, tuple[int, int]]:
    """(mtime, size) of the regular files under root (FIFOs, links etc. are never opened)."""
    seen: dict[str, tuple[int, int]] = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                seen[os.path.relpath(path, root)] = (st.st_mtime_ns, st.st_size)
            if len(seen) >= MAX_SCAN:
                return seen
    return seen


def _as_png(path: str, limits: dict[str, int]) -> bytes:
    from PIL import Image

    cap = limits["image_pixels"]
    with Image.open(path) as im:
        w, h = im.size
        if w * h > IMAGE_OVERSIZE * cap:
            raise ValueError(f"{w}x{h} px is too large; save it with at most {cap} pixels")
        if w * h > cap:
            scale = (cap / (w * h)) ** 0.5
            im.thumbnail((max(1, int(w * scale)), max(1, int(h * scale))))
        if im.mode in ("L", "LA", "RGB", "RGBA"):
            mode = im.mode
        else:
            mode = "RGBA" if im.mode == "PA" or "transparency" in im.info else "RGB"
        buf = io.BytesIO()
        im.convert(mode).save(buf, "PNG", compress_level=3)
    png = buf.getvalue()
    if len(png) > 4 * cap + 65_536:  # the host's per-image budget
        raise ValueError("the PNG is too large")
    return png


def _output_images(
    workdir: str, before: dict[str, tuple[int, int]], limits: dict[str, int], notes: list[str]
) -> list[tuple[str, bytes]]:
    """The newest max_images images that the code created or changed, re-encoded as PNG."""
    after = _snapshot(workdir)
    candidates = sorted(
        (
            (sig[0], name)
            for name, sig in after.items()
            if name.lower().endswith(IMAGE_SUFFIXES) and before.get(name) != sig
        ),
        reverse=True,
    )
    chosen: list[tuple[int, str, bytes]] = []
    for k, (mtime, name) in enumerate(candidates):
        if len(chosen) == limits["max_images"]:
            notes.append(
                f"{len(candidates) - k} older image(s) not returned (at most {limits['max_images']})"
            )
            break
        try:
            chosen.append((mtime, name, _as_png(os.path.join(workdir, name), limits)))
        except Exception as exn:  # a broken or huge file the code wrote: say so, keep the rest
            notes.append(f"image {name} not returned: {type(exn).__name__}: {exn}")
    return [(name, png) for _, name, png in sorted(chosen)]


def _chain(exn: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    cur: BaseException | None = exn
    while cur is not None and cur not in seen:
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    return seen


def _describe(exn: BaseException) -> str:
    """The tail of the traceback, with only the frames of the user's code."""
    frames = [f for f in traceback.extract_tb(exn.__traceback__) if f.filename == FILENAME][-3:]
    text = "".join(traceback.format_list(frames) + traceback.format_exception_only(type(exn), exn)).strip()
    return text if len(text) <= 2000 else "..." + text[-2000:]


def _classify(exn: BaseException, limits: dict[str, int]) -> tuple[str, str | None]:
    """(status, error) for an exception that escaped the user's code."""
    if isinstance(exn, SystemExit) and exn.code in (None, 0):
        return "ok", None
    forbidden = next((e for e in _chain(exn) if isinstance(e, Forbidden)), None)
    if forbidden is not None:
        lines = [f.lineno for f in traceback.extract_tb(forbidden.__traceback__) if f.filename == FILENAME]
        return "forbidden", f"{forbidden} (line {lines[-1]})" if lines else str(forbidden)
    if isinstance(exn, MemoryError):
        return "memory_limit", f"memory limit of {limits['memory_mb']} MB exceeded\n{_describe(exn)}"
    if isinstance(exn, OSError) and exn.errno in (errno.EFBIG, errno.ENOSPC, errno.EDQUOT):
        size = f"{limits['file_mb']} MB per file, {limits['workdir_mb']} MB in all"
        return "file_limit", f"file size limit ({size}) exceeded\n{_describe(exn)}"
    return "error", _describe(exn)


def _set_limits(limits: dict[str, int]) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so too-large writes raise OSError(EFBIG)
    mb = 1 << 20
    for which, value in (
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_FSIZE, limits["file_mb"] * mb),
        (resource.RLIMIT_NOFILE, 64),
        (resource.RLIMIT_AS, limits["memory_mb"] * mb),
        # Counted per real uid (in this user namespace): 0 means no new process and no new thread.
        (resource.RLIMIT_NPROC, 0),
    ):
        resource.setrlimit(which, (value, value))
    # SIGXCPU at the soft limit kills us; SIGKILL at the hard one even if the code ignores SIGXCPU.
    resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu_s"], limits["cpu_s"] + 1))


def _report(
    fd: int, status: str, error: str | None, notes: list[str], images: list[tuple[str, bytes]]
) -> None:
    header = {
        "status": status,
        "error": error,
        "notes": notes,
        "images": [[n, len(png)] for n, png in images],
    }
    message = json.dumps(header).encode() + b"\n" + b"".join(png for _, png in images)
    data = memoryview(message + TRAILER.pack(MAGIC, len(message)))
    while data:
        data = data[os.write(fd, data) :]


def main() -> None:
    result_fd = int(sys.argv[1])
    os.write(result_fd, READY)
    job, blobs = _read_job()
    sys.path.extend(job["sys_path"])
    import numpy as np
    from PIL import Image

    limits, workdir, code = job["limits"], job["workdir"], job["code"]
    notes: list[str] = []
    try:
        arrays = _load_inputs(job, blobs)
    except Exception as exn:  # e.g. encoded input bytes that do not decode
        _report(result_fd, "error", f"could not load the inputs: {type(exn).__name__}: {exn}", notes, [])
        os._exit(0)
    del blobs
    before = _snapshot(workdir)
    # The code runs as __main__ (as a script would: pickling and dataclasses look it up there).
    module = types.ModuleType("__main__")
    user_globals = module.__dict__
    user_globals.update(np=np, Image=Image, images=arrays, image=arrays[0] if arrays else None)
    sys.modules["__main__"] = module
    builtins.exit = builtins.quit = sys.exit  # normally added by site, which does not run here
    # Source lines in tracebacks.
    linecache.cache[FILENAME] = (len(code), None, code.splitlines(True), FILENAME)
    sys.argv = [FILENAME]
    reserve = bytearray(RESERVE_BYTES)
    _set_limits(limits)
    sys.addaudithook(_audit)
    status, error = "ok", None
    try:
        exec(compile(code, FILENAME, "exec", dont_inherit=True), user_globals)
    except BaseException as exn:
        del reserve  # headroom to format the error after a MemoryError
        status, error = _classify(exn, limits)
    for stream in (sys.__stdout__, sys.__stderr__):
        with contextlib.suppress(Exception):  # the code may have closed them
            stream.flush()
    user_globals.clear()  # free what the code allocated before encoding its images
    gc.collect()
    try:
        images = _output_images(workdir, before, limits, notes)
    except Exception as exn:  # e.g. MemoryError, or the code broke os/PIL for us
        images, notes = [], [*notes, f"images not returned: {type(exn).__name__}: {exn}"]
    try:
        _report(result_fd, status, error, notes, images)
    except OSError:  # the code closed the result fd: the host reports the missing result
        os._exit(1)
    os._exit(0)  # skip interpreter teardown: no user atexit handlers or finalizers after the report


if __name__ == "__main__":
    main()
