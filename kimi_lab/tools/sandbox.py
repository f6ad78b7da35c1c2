"""A sandbox for model-written Python (the "code tool"): ``run_python(code, images, files)``.

Used by SFT data verification, RL rollouts and the agent swarm. Each call runs the code in a fresh
bubblewrap (``bwrap``) sandbox; nothing the code does raises here, it comes back as a ``ToolResult``.

What the code sees:
  * cwd ``/work`` (also ``$HOME``): a tmpfs of ``workdir_mb`` holding the input ``files`` and the
    input images as ``image_0.png``, ``image_1.png``, ...; it disappears with the sandbox.
  * globals ``images`` (list of uint8 HxWx3 RGB arrays), ``image`` (the first one, or None),
    ``np`` (numpy) and ``Image`` (``PIL.Image``); ``__name__ == "__main__"``.
  * read-only: ``/usr``, the Python installation, its site-packages (a venv appears at ``/venv``);
    nothing else of the host: no ``/etc``, no home, no repo, no host ``/tmp``; no network.
  * no new processes or threads, limited CPU time, memory, file sizes and output.
Images the code saves in its working dir (png/jpg/jpeg/gif/bmp/webp, new or changed files) come back
as PNG bytes, the newest ``max_images``, downscaled to ``image_pixels`` (over 4x that: skipped, with a
``[sandbox: ...]`` note at the end of stdout). Output beyond ``output_bytes`` stops the run: status
``output_limit``, ``stdout`` holds the first ``output_bytes``.

Isolation, layered: bwrap namespaces (user, mount, pid, net, ipc, uts, cgroup) with read-only binds;
rlimits set by the runner before the code runs (CPU, address space, file size, open files, and
``RLIMIT_NPROC=0``); an audit hook that turns process creation, sockets and ctypes into a clear
``forbidden`` status; the host's wall clock and byte caps on everything it reads. The bwrap command
line, and a root host's drop to a fresh uid, are ``tools.bwrap``'s (the page renderer's too).
"""

from __future__ import annotations

import functools
import json
import os
import selectors
import shutil
import signal
import site
import struct
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from io import BytesIO
from pathlib import Path

import numpy as np

from kimi_lab.tools.bwrap import BWRAP, bwrap_command
from kimi_lab.tools.sandbox_runner import MAGIC, READY, TRAILER  # the protocol (stdlib-only module)

RUNNER = Path(__file__).with_name("sandbox_runner.py")
WORKDIR = "/work"
VENV_DEST = "/venv"
RUNNER_DEST = "/sandbox_runner.py"
INSTALL_HINT = "apt-get install -y bubblewrap"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
STATUSES = (
    "ok",
    "error",
    "timeout",
    "cpu_limit",
    "memory_limit",
    "output_limit",
    "file_limit",
    "forbidden",
    "sandbox_error",
)
SANDBOX_ENV = {
    "PATH": "/usr/bin:/bin",
    "HOME": WORKDIR,
    "LANG": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MPLBACKEND": "Agg",
}


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot start here (bwrap missing, user namespaces disabled, ...); never run unsandboxed."""


@dataclass(frozen=True)
class SandboxLimits:
    wall_s: float = 10.0  # wall-clock timeout for the whole run
    cpu_s: int = 10  # RLIMIT_CPU
    memory_mb: int = 1024  # RLIMIT_AS of the python process
    output_bytes: int = 16_384  # stdout+stderr kept (more stops the run: "output_limit")
    file_mb: int = 16  # RLIMIT_FSIZE: largest file the code may write
    workdir_mb: int = 64  # size of the (tmpfs) working directory
    max_images: int = 4  # images returned
    image_pixels: int = 4_000_000  # per returned image

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not value > 0:
                raise ValueError(f"SandboxLimits.{name} must be positive, got {value!r}")


@dataclass
class ToolResult:
    status: str  # one of STATUSES
    stdout: str  # stdout and stderr interleaved, at most output_bytes (plus notes on skipped images)
    error: str | None  # None when ok; else the tail of the traceback of the user's code, or what stopped it
    images: list[tuple[str, bytes]] = field(default_factory=list)  # (name in the working dir, PNG bytes)
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def observation(self, max_chars: int = 2000) -> str:
        """The tool message a model reads: stdout, then ``error: ...``; the middle of a long stdout is cut."""
        error = "" if self.ok else f"error: {self.error or self.status}"
        if len(error) > max_chars // 2:  # its end names the exception: keep that
            error = "error: [...]" + error[len(error) - max_chars // 2 + 12 :]
        out = self.stdout
        room = max_chars - len(error) - 1
        if len(out) > room:
            keep = max(room - 60, 0)  # 60: room for the marker
            marker = f"\n[... {len(out) - keep} of {len(out)} characters of output cut ...]\n"
            out = out[: keep // 2] + marker + out[len(out) - (keep - keep // 2) :]
        if error and out and not out.endswith("\n"):
            out += "\n"
        return (out + error) or "(no output)"


def sandbox_unavailable_reason() -> str | None:
    """None when the sandbox works here, else one line saying why and how to fix it (cached per BWRAP)."""
    return _probe(BWRAP)


@functools.lru_cache(maxsize=4)
def _probe(bwrap: str) -> str | None:
    try:
        result = run_python("print('ok')", limits=SandboxLimits(wall_s=30))
    except SandboxUnavailable as exn:
        return str(exn)
    if result.ok and result.stdout == "ok\n":
        return None
    return f"the sandbox starts but does not work: {result.status}: {result.error}"


def run_python(
    code: str,
    images: Sequence[np.ndarray | bytes] = (),
    files: Mapping[str, bytes | str] = {},
    limits: SandboxLimits = SandboxLimits(),
) -> ToolResult:
    """Run ``code`` as a script in a fresh sandbox (see the module docstring).

    Raises ValueError for bad arguments and SandboxUnavailable when the sandbox cannot start; anything
    the code does (errors, limits, forbidden calls) is reported in the returned ToolResult.
    """
    header, blobs = _job(code, images, files, limits)
    bwrap = shutil.which(BWRAP)
    if bwrap is None:
        raise SandboxUnavailable(
            f"bubblewrap ({BWRAP!r}) is not installed or not on PATH; install it: {INSTALL_HINT}"
        )
    result_r, result_w = os.pipe()
    stdin = os.memfd_create("kimi-sandbox-job", os.MFD_CLOEXEC)
    try:
        _write_all(stdin, json.dumps(header).encode() + b"\n", *blobs)
        os.lseek(stdin, 0, os.SEEK_SET)
        argv = _command(bwrap, result_w, limits)
        start = time.monotonic()
        try:
            proc = subprocess.Popen(
                argv,
                stdin=stdin,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                pass_fds=(result_w,),
                start_new_session=True,  # one process group to kill
                env={},
            )
        except OSError as exn:
            raise SandboxUnavailable(f"cannot start bubblewrap: {exn}; install it: {INSTALL_HINT}") from exn
        os.close(result_w)
        result_w = -1
        with proc:
            assert proc.stdout is not None
            out, res, stopped = _collect(proc, proc.stdout.fileno(), result_r, limits, start)
        return _result(proc.returncode, out, res, stopped, limits, time.monotonic() - start)
    finally:
        for fd in (stdin, result_r, result_w):
            if fd >= 0:
                os.close(fd)


def _job(
    code: str, images: Sequence[np.ndarray | bytes], files: Mapping[str, bytes | str], limits: SandboxLimits
) -> tuple[dict, list[bytes]]:
    """The runner's job header and blobs; ValueError for anything wrong with the arguments."""
    if not isinstance(code, str):
        raise ValueError(f"code must be a str, got {type(code).__name__}")
    if not isinstance(limits, SandboxLimits):
        raise ValueError(f"limits must be a SandboxLimits, got {type(limits).__name__}")
    image_names = {f"image_{i}.png" for i in range(len(images))}
    file_specs, blobs = [], []
    for name, content in files.items():
        if not isinstance(name, str) or name in ("", ".") or "/" in name or ".." in name or "\0" in name:
            raise ValueError(f"bad file name {name!r}: a plain name in the working dir, without '/' or '..'")
        if name in image_names:
            raise ValueError(f"file name {name!r} clashes with an input image")
        if not isinstance(content, bytes | str):
            raise ValueError(f"content of file {name!r} must be bytes or str, got {type(content).__name__}")
        data = content.encode() if isinstance(content, str) else bytes(content)
        file_specs.append([name, len(data)])
        blobs.append(data)
    image_specs = []
    for i, img in enumerate(images):
        if isinstance(img, np.ndarray):
            if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3 or 0 in img.shape:
                raise ValueError(f"image {i} must be a uint8 HxWx3 RGB array, got {img.dtype} {img.shape}")
            data, shape = np.ascontiguousarray(img).tobytes(), list(img.shape)
        elif isinstance(img, bytes):
            _check_encoded(i, img)
            data, shape = img, None
        else:
            raise ValueError(
                f"image {i} must be a numpy array or encoded image bytes, got {type(img).__name__}"
            )
        image_specs.append({"size": len(data), "shape": shape})
        blobs.append(data)
    if sum(map(len, blobs)) > limits.workdir_mb << 20:
        raise ValueError(f"the input files and images do not fit in workdir_mb={limits.workdir_mb}")
    header = {
        "code": code,
        "sys_path": _sandbox_sys_path(),
        "workdir": WORKDIR,
        "limits": asdict(limits),
        "files": file_specs,
        "images": image_specs,
    }
    return header, blobs


def _check_encoded(i: int, data: bytes) -> None:
    """Encoded input images are decoded inside the sandbox; here only their header is checked."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(BytesIO(data)):
            pass
    except (UnidentifiedImageError, OSError) as exn:
        raise ValueError(f"image {i}: bytes are not a readable image ({exn})") from exn


def _write_all(fd: int, *chunks: bytes) -> None:
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view) :]


@functools.cache
def _binds() -> tuple[tuple[str, str], ...]:
    """(host path, sandbox path) of the read-only trees the interpreter needs, besides /usr."""
    base, prefix = os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix)
    binds = [] if _under(base, "/usr") else [(base, base)]
    if prefix != base:  # a venv: its site-packages, at a fixed place (its host path may be under /work)
        binds.append((prefix, VENV_DEST))
    binds.append((str(RUNNER.resolve()), RUNNER_DEST))
    return tuple(binds)


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _inside(path: str) -> str | None:
    """Where a host path appears in the sandbox, or None if it is not there."""
    path = os.path.realpath(path)
    for src, dest in (("/usr", "/usr"), *_binds()):
        if _under(path, src):
            return dest + path[len(src) :]
    return None


@functools.cache
def _sandbox_sys_path() -> list[str]:
    """site-packages as the sandbox sees them (the runner starts without `site`)."""
    found = (_inside(p) for p in site.getsitepackages())
    return list(dict.fromkeys(p for p in found if p is not None))


def _command(bwrap: str, result_fd: int, limits: SandboxLimits) -> list[str]:
    """The runner in a fresh sandbox, its working folder a tmpfs of ``workdir_mb``."""
    python = _inside(sys.executable)
    if python is None:
        raise SandboxUnavailable(
            f"the interpreter {os.path.realpath(sys.executable)} is outside the trees bound into the sandbox"
        )
    runner_argv = [python, "-I", "-S", "-B", "-u", RUNNER_DEST, str(result_fd)]
    workdir = [(WORKDIR, limits.workdir_mb << 20)]
    return bwrap_command(bwrap, runner_argv, list(_binds()), SANDBOX_ENV, workdir, WORKDIR)


def _result_cap(limits: SandboxLimits) -> int:
    """Cap on the runner's result message: the images (the runner's per-image budget) and slack."""
    return (1 << 20) + limits.max_images * (4 * limits.image_pixels + 65_536)


def _collect(
    proc: subprocess.Popen, out_fd: int, result_fd: int, limits: SandboxLimits, start: float
) -> tuple[bytes, bytes, str | None]:
    """Read stdout and the result channel until both close, within the wall clock and byte caps.

    Returns (stdout, result, why the host stopped the run or None)."""
    caps = {out_fd: limits.output_bytes, result_fd: _result_cap(limits)}
    bufs = {out_fd: bytearray(), result_fd: bytearray()}
    deadline = start + limits.wall_s
    stopped = None
    with selectors.DefaultSelector() as sel:
        for fd in caps:
            sel.register(fd, selectors.EVENT_READ)
        while sel.get_map() and stopped is None:
            left = deadline - time.monotonic()
            if left <= 0:
                stopped = "timeout"
                break
            for key, _ in sel.select(left):
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    sel.unregister(key.fd)
                    continue
                bufs[key.fd] += chunk
                if len(bufs[key.fd]) > caps[key.fd]:
                    stopped = "output_limit"
    if stopped is None:
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 0))
        except subprocess.TimeoutExpired:
            stopped = "timeout"
    if stopped is not None:
        if proc.poll() is None:
            # bwrap's sandbox dies with it (--die-with-parent; its pid namespace goes with pid 1).
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return bytes(bufs[out_fd]), bytes(bufs[result_fd]), stopped


def _result(
    returncode: int, out: bytes, res: bytes, stopped: str | None, limits: SandboxLimits, wall_s: float
) -> ToolResult:
    stdout = out[: limits.output_bytes].decode("utf-8", "replace")
    if stopped == "timeout":
        return ToolResult("timeout", stdout, f"timed out after {limits.wall_s} s (wall clock)", [], wall_s)
    if stopped == "output_limit":
        if len(out) > limits.output_bytes:
            error = f"output exceeded {limits.output_bytes} bytes; the run was stopped"
        else:
            error = f"the result message exceeded {_result_cap(limits)} bytes; the run was stopped"
        return ToolResult("output_limit", stdout, error, [], wall_s)
    if not res.startswith(READY):
        lines = stdout.strip().splitlines() or [f"exit status {returncode}"]
        raise SandboxUnavailable(
            f"the bubblewrap sandbox failed to start ({lines[-1]}); it needs unprivileged user namespaces "
            "(sysctl kernel.unprivileged_userns_clone=1, kernel.apparmor_restrict_unprivileged_userns=0) "
            f"and, as root, CAP_SYS_ADMIN; bwrap itself: {INSTALL_HINT}"
        )
    message = _message(res[len(READY) :])
    if message is None:
        # No report: the process died. RLIMIT_CPU sends SIGXCPU, then SIGKILL at the hard limit.
        if returncode in (128 + signal.SIGXCPU, 128 + signal.SIGKILL):
            return ToolResult("cpu_limit", stdout, f"CPU time limit of {limits.cpu_s} s exceeded", [], wall_s)
        how = (
            f"was killed by {signal.Signals(returncode - 128).name}"
            if 128 < returncode < 128 + signal.NSIG
            else f"exited with status {returncode}"
        )
        return ToolResult("error", stdout, f"the process {how} before reporting a result", [], wall_s)
    try:
        header, blobs = message
        status, error = header["status"], header["error"]
        if status not in STATUSES or not (error is None or isinstance(error, str)):
            raise ValueError(f"status {status!r}")
        images, offset = [], 0
        for name, size in header["images"][: limits.max_images]:
            png = blobs[offset : offset + size]
            offset += size
            if _png_pixels(png) <= limits.image_pixels:
                images.append((str(name), png))
        notes = [f"[sandbox: {note}]\n" for note in header["notes"]]
    except (KeyError, TypeError, ValueError) as exn:
        return ToolResult("sandbox_error", stdout, f"malformed result from the sandbox: {exn}", [], wall_s)
    if notes and stdout and not stdout.endswith("\n"):
        stdout += "\n"
    return ToolResult(status, stdout + "".join(notes), error, images, wall_s)


def _message(body: bytes) -> tuple[dict, bytes] | None:
    """The runner's message: the one the trailer at the very end points to (see sandbox_runner)."""
    if len(body) < TRAILER.size:
        return None
    magic, size = TRAILER.unpack(body[-TRAILER.size :])
    if magic != MAGIC or size > len(body) - TRAILER.size:
        return None
    message = body[-TRAILER.size - size : -TRAILER.size]
    line, _, blobs = message.partition(b"\n")
    try:
        header = json.loads(line)
    except ValueError:
        return None
    return (header, blobs) if isinstance(header, dict) else None


def _png_pixels(png: bytes) -> int:
    """Width x height from the IHDR chunk; ValueError if it is not a PNG (never decoded here)."""
    if len(png) < 24 or not png.startswith(PNG_SIGNATURE) or png[12:16] != b"IHDR":
        raise ValueError("an image is not a PNG")
    width, height = struct.unpack(">II", png[16:24])
    return width * height
