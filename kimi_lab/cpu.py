"""Process-level CPU tuning that pays for itself on small machines.

glibc returns every large freed block to the OS and page-faults it back in on the
next allocation; a training step allocates and frees the same large activations
every step, so on a 2-core machine a third of the step can go to page faults.
Raising the mmap and trim thresholds keeps those blocks in the heap for reuse.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import sys
from pathlib import Path

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_done = False


def tune_cpu_allocator() -> bool:
    """Keep freed large blocks for reuse (glibc only). Set KIMI_LAB_NO_MALLOC_TUNING=1 to skip."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux") or os.environ.get("KIMI_LAB_NO_MALLOC_TUNING") == "1":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False
    _done = ok
    return ok


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls run several times faster than fp32 there."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))


def available_memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# The CPU features that decide how fast matmuls run, narrowest first.
MATMUL_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_flags() -> list[str]:
    """Which of ``MATMUL_FLAGS`` this CPU has (empty where /proc/cpuinfo is unreadable)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    present = set(re.findall(r"\b(" + "|".join(MATMUL_FLAGS) + r")\b", info))
    return [f for f in MATMUL_FLAGS if f in present]


def cpu_description() -> str:
    """The CPU model, cores and matmul flags, for benchmark reports
    (``AMD EPYC 9B14, 2 cores, flags avx2 fma avx512f avx512_bf16``)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        import platform

        return platform.processor() or platform.machine()
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "?")
    flags = cpu_flags()
    return (
        f"{name}, {os.cpu_count()} cores, flags {' '.join(flags) if flags else 'none of ' + ' '.join(MATMUL_FLAGS)}"
        + ("" if cpu_has_native_bf16() else " (bf16 emulated)")
    )
