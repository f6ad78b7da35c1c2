"""The code tool's sandbox: normal runs, and hostile code that must end with a clear status and no effect outside."""

from __future__ import annotations

import io
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kimi_lab.tools import (
    SandboxLimits,
    SandboxUnavailable,
    ToolResult,
    run_python,
    sandbox,
    sandbox_unavailable_reason,
)

REPO = Path(__file__).resolve().parents[2]
# Small limits keep the hostile cases quick.
SMALL = SandboxLimits(wall_s=5, cpu_s=1, memory_mb=256, output_bytes=4096, file_mb=4, workdir_mb=8)


def run(code: str, **kwargs) -> ToolResult:
    return run_python(code, limits=kwargs.pop("limits", SMALL), **kwargs)


def host_path() -> Path:
    """A host path that does not exist yet; the sandboxed code tries to create it."""
    return Path("/tmp") / f"kimi-sandbox-probe-{uuid.uuid4().hex}"


def test_sandbox_is_available_here():
    assert sandbox_unavailable_reason() is None


def test_ok_run_with_image_file_and_output_image():
    img = np.zeros((20, 30, 3), np.uint8)
    img[:5, :4] = (255, 0, 0)
    code = (
        "red = (image[..., 0] > 200) & (image[..., 1] < 50)\n"
        "n = int(open('n.txt').read())\n"
        "print('red pixels:', int(red.sum()), 'n:', n, 'inputs:', len(images))\n"
        "Image.fromarray((red * 255).astype(np.uint8)).save('mask.png')\n"
    )
    result = run_python(code, images=[img], files={"n.txt": "7"})
    assert result.ok, result.error
    assert result.error is None
    assert result.stdout == "red pixels: 20 n: 7 inputs: 1\n"
    [(name, png)] = result.images
    assert name == "mask.png"
    mask = np.asarray(Image.open(io.BytesIO(png)))
    assert mask.shape == (20, 30) and int((mask > 0).sum()) == 20
    assert result.observation() == result.stdout
    assert 0 < result.wall_s < 5


def test_encoded_input_image_and_jpeg_output_come_back_as_png():
    buf = io.BytesIO()
    Image.new("RGB", (16, 8), (0, 0, 255)).save(buf, "PNG")
    code = "import os\nprint(image.shape, sorted(os.listdir()))\nos.mkdir('out')\nImage.new('RGB', (5, 5)).save('out/x.jpg')\n"
    result = run(code, images=[buf.getvalue()])
    assert result.ok, result.error
    assert result.stdout == "(8, 16, 3) ['image_0.png']\n"
    [(name, png)] = result.images  # the input image_0.png is not returned
    assert name == "out/x.jpg" and png.startswith(b"\x89PNG")


def test_syntax_error():
    result = run("x = (1,\nprint(x)\n")
    assert result.status == "error"
    assert "SyntaxError" in result.error and '"<tool>"' in result.error


def test_exception_shows_the_users_lines_only():
    result = run("def f(x):\n    return 1 / x\nprint('before')\nf(0)\n")
    assert result.status == "error"
    assert result.stdout == "before\n"
    assert result.error.endswith("ZeroDivisionError: division by zero")
    assert "line 2, in f" in result.error and "return 1 / x" in result.error
    assert "sandbox_runner" not in result.error and "exec(" not in result.error
    assert result.observation() == f"before\nerror: {result.error}"


def test_infinite_loop_hits_the_cpu_limit():
    # A wall clock far above the CPU limit: on a loaded machine 1 CPU-second can take many seconds.
    result = run("while True:\n    pass\n", limits=SandboxLimits(wall_s=60, cpu_s=1))
    assert result.status == "cpu_limit", result
    assert "CPU time limit" in result.error


def test_sleeping_hits_the_wall_clock():
    result = run("import time\nprint('start')\ntime.sleep(60)\n", limits=SandboxLimits(wall_s=1.0, cpu_s=1))
    assert result.status == "timeout"
    assert result.error == "timed out after 1.0 s (wall clock)"
    assert result.stdout == "start\n"  # output streamed before the kill is kept
    assert result.wall_s < 3


@pytest.mark.parametrize(
    "code",
    [
        "import os\nwhile True:\n    os.fork()\n",
        "import subprocess\nwhile True:\n    subprocess.Popen(['/bin/sh', '-c', 'sleep 100'])\n",
        "import subprocess\nsubprocess.run(['/bin/sh', '-c', 'echo hi'])\n",
        "import os\nos.execv('/bin/sh', ['sh'])\n",
    ],
)
def test_process_creation_is_forbidden(code):
    result = run(code)
    assert result.status == "forbidden"
    assert result.error.startswith("forbidden: creating processes is not allowed in the sandbox")


def test_spawning_a_shell_has_no_effect_outside():
    target = host_path()
    result = run(f"import os\nos.system(\"sh -c 'echo pwned > {target}'\")\n")
    assert result.status == "forbidden"
    assert "(os.system) (line 2)" in result.error
    assert not target.exists()


def test_kernel_blocks_new_threads_and_processes_behind_the_audit_hook():
    # Threads are not audited: RLIMIT_NPROC=0 under a non-root uid is what stops them.
    code = (
        "import os, resource, threading\n"
        "print(os.getuid() != 0, resource.getrlimit(resource.RLIMIT_NPROC))\n"
        "threading.Thread(target=print).start()\n"
    )
    result = run(code)
    assert result.stdout == "True (0, 0)\n"
    assert result.status == "error" and "can't start new thread" in result.error


@pytest.mark.parametrize(
    "code", ["x = bytearray(10**10)\n", "x = []\nwhile True:\n    x.append(bytes(10**6))\n"]
)
def test_memory_bombs_hit_the_memory_limit(code):
    result = run(code)
    assert result.status == "memory_limit"
    assert result.error.startswith("memory limit of 256 MB exceeded") and "MemoryError" in result.error


def test_a_huge_file_hits_the_file_limit():
    result = run("with open('big', 'wb') as f:\n    for _ in range(64):\n        f.write(bytes(1 << 20))\n")
    assert result.status == "file_limit"
    assert "File too large" in result.error


def test_filling_the_workdir_hits_the_file_limit():
    result = run("for i in range(100):\n    open(f'f{i}', 'wb').write(bytes(3 << 20))\n")
    assert result.status == "file_limit"
    assert "No space left on device" in result.error


@pytest.mark.parametrize("address", ["('1.1.1.1', 80)", "('127.0.0.1', 80)"])
def test_network_is_forbidden(address):
    result = run(f"import socket\ns = socket.socket()\ns.connect({address})\n")
    assert result.status == "forbidden"
    assert result.error.startswith("forbidden: network access is not allowed in the sandbox")


def test_native_code_is_forbidden():
    result = run("import ctypes\nctypes.CDLL('libc.so.6').fork()\n")
    assert result.status == "forbidden"


def test_host_files_are_not_visible(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cret")
    paths = ["/etc/passwd", "/etc/shadow", str(REPO / "README.md"), str(REPO / "pyproject.toml"), str(secret)]
    code = (
        f"for p in {paths!r}:\n"
        "    try:\n"
        "        print('LEAK', p, open(p).read()[:20])\n"
        "    except OSError as e:\n"
        "        print(type(e).__name__)\n"
        "import os\n"
        "print(sorted(os.listdir('/')), os.environ.get('KIMI_SANDBOX_TEST_SECRET'))\n"
    )
    result = run(code)
    assert result.ok, result.error
    assert "LEAK" not in result.stdout and "s3cret" not in result.stdout
    assert result.stdout.count("FileNotFoundError") == len(paths)
    for hidden in ("'etc'", "'home'", "'tmp'", "'var'"):
        assert hidden not in result.stdout


def test_host_environment_is_not_visible(monkeypatch):
    monkeypatch.setenv("KIMI_SANDBOX_TEST_SECRET", "s3cret")
    result = run("import os\nprint(sorted(os.environ))\n")
    assert result.ok and "KIMI_SANDBOX_TEST_SECRET" not in result.stdout


def test_writing_outside_the_workdir_changes_nothing_on_the_host():
    targets = [host_path(), REPO / f"kimi-sandbox-probe-{uuid.uuid4().hex}"]
    code = (
        f"for p in {[str(t) for t in targets]!r} + ['/usr/x', '/x', '/dev/shm/x']:\n"
        "    try:\n"
        "        open(p, 'w').write('pwned')\n"
        "        print('WROTE', p)\n"
        "    except OSError as e:\n"
        "        print(type(e).__name__)\n"
    )
    result = run(code)
    assert result.ok, result.error
    assert "WROTE" not in result.stdout
    for target in targets:
        assert not target.exists()


@pytest.mark.parametrize("code", ["print('x' * 10_000_000)\n", "while True:\n    print('spam')\n"])
def test_huge_output_is_truncated_and_flagged(code):
    result = run(code)
    assert result.status == "output_limit"
    assert 0 < len(result.stdout) <= SMALL.output_bytes
    assert "output exceeded 4096 bytes" in result.error


def test_output_images_are_capped():
    code = (
        "import time\n"
        "Image.new('RGB', (3000, 1000)).save('wide.png')\n"
        "for i in range(5):\n"
        "    time.sleep(0.02)  # distinct mtimes: file timestamps are coarse\n"
        "    Image.new('RGB', (4, 4), (i, 0, 0)).save(f'p{i}.png')\n"
    )
    result = run(code, limits=SandboxLimits(max_images=3, image_pixels=1_000_000))
    assert result.ok, result.error
    assert [name for name, _ in result.images] == ["p2.png", "p3.png", "p4.png"]  # the newest
    assert "3 older image(s) not returned" in result.stdout
    result = run(
        "Image.new('RGB', (3000, 1000)).save('wide.png')\n", limits=SandboxLimits(image_pixels=1_000_000)
    )
    [(_, png)] = result.images
    w, h = Image.open(io.BytesIO(png)).size
    assert w * h <= 1_000_000 and w == 3 * h  # downscaled


def test_concurrent_runs():
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda i: run(f"print({i} * 2)"), range(3)))
    assert [r.stdout for r in results] == ["0\n", "2\n", "4\n"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"files": {"../x": b""}},
        {"files": {"a/b": "x"}},
        {"files": {"image_0.png": b""}, "images": [np.zeros((2, 2, 3), np.uint8)]},
        {"images": [np.zeros((2, 2), np.uint8)]},
        {"images": [np.zeros((2, 2, 3), np.float32)]},
        {"images": [b"not an image"]},
    ],
)
def test_bad_arguments_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        run_python("print(1)", **kwargs)


def test_bad_limits_raise_value_error():
    with pytest.raises(ValueError, match="cpu_s"):
        SandboxLimits(cpu_s=0)


def test_missing_bwrap_raises_sandbox_unavailable(monkeypatch):
    monkeypatch.setattr(sandbox, "BWRAP", "/nonexistent/bwrap")
    with pytest.raises(SandboxUnavailable) as info:
        run_python("print(1)")
    message = str(info.value)
    assert "\n" not in message and "apt-get install -y bubblewrap" in message
    assert sandbox_unavailable_reason() == message


def test_broken_bwrap_raises_sandbox_unavailable(monkeypatch):
    monkeypatch.setattr(sandbox, "BWRAP", "/bin/false")
    with pytest.raises(SandboxUnavailable, match="failed to start"):
        run_python("print(1)")


def test_observation_truncates_long_output_but_keeps_the_error():
    result = ToolResult("error", "a" * 5000 + "END\n", "Traceback tail\nValueError: bad", [], 0.1)
    text = result.observation(max_chars=500)
    assert len(text) <= 500
    assert text.startswith("aaa") and "characters of output cut" in text
    assert text.endswith("END\nerror: Traceback tail\nValueError: bad")
    assert ToolResult("ok", "", None, [], 0.1).observation() == "(no output)"
    assert ToolResult("timeout", "", "timed out", [], 1).observation() == "error: timed out"
