"""The sandbox's launcher when the host runs as root: stage the bind sources, drop to a fresh uid, exec bwrap.

Started by ``kimi_lab.tools.bwrap`` as ``python -I -S sandbox_launcher.py JOB`` (root only), so it
imports nothing but the stdlib. ``JOB`` is JSON: ``{"staging": a directory, "stage": [[src, dst]],
"uid": int, "argv": bwrap's argv}``. Why: bwrap, started by an unprivileged uid, must reach every
tree it binds, and root's trees (a venv under /root, say) are not reachable by that uid. So, in a
mount namespace private to this process, each source is bind-mounted under ``staging`` (a small
tmpfs), where any uid can traverse it; then the process drops to ``uid`` and becomes bwrap.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
from typing import Any

CLONE_NEWNS = 0x20000
MS_NOSUID, MS_NODEV, MS_BIND, MS_REC, MS_PRIVATE = 0x2, 0x4, 0x1000, 0x4000, 0x40000


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def stage_and_exec(job: dict[str, Any]) -> None:
    """Never returns: the process becomes ``job["argv"]`` as ``job["uid"]``."""
    os.umask(0o022)  # the sandbox uid must be able to traverse the staged trees
    libc = ctypes.CDLL(None, use_errno=True)
    _check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "making / private")
    tmpfs_opts = b"mode=0755,size=64k"
    staging = job["staging"].encode()
    _check(
        libc.mount(b"tmpfs", staging, b"tmpfs", MS_NOSUID | MS_NODEV, tmpfs_opts),
        "mounting the staging tmpfs",
    )
    for src, dst in job["stage"]:
        if os.path.isdir(src):
            os.mkdir(dst)
        else:
            open(dst, "x").close()
        _check(libc.mount(src.encode(), dst.encode(), None, MS_BIND | MS_REC, None), f"binding {src}")
    os.setgroups([])
    os.setgid(job["uid"])
    os.setuid(job["uid"])
    os.execv(job["argv"][0], job["argv"])


def main(argv: list[str]) -> None:
    stage_and_exec(json.loads(argv[0]))


if __name__ == "__main__":
    main(sys.argv[1:])
