"""The bubblewrap command line of both sandboxes: the code tool (``sandbox``) and the page
renderer (``render_worker``). One function, so a hardening added for one holds for the other.

Every sandbox gets fresh namespaces of every kind (user, mount, pid, net, ipc, uts, cgroup), user
namespaces disabled inside (``--disable-userns``: the code cannot build itself a new root), dies
with its parent, runs in a new session, sees only its ``env``, ``/usr`` and read-only binds of
what it needs, ``/proc``, a read-only ``/dev``, its own size-capped tmpfs folders, and a read-only
root. On a root host RLIMIT_NPROC means nothing (uid 0 ignores it, and it is counted per real
uid), and a sandbox's files would belong to root: so root starts ``sandbox_launcher``, which
bind-mounts the binds' sources under ``STAGING`` in a private mount namespace (a fresh uid cannot
reach trees such as ``/root/.pyenv``, mode 0700), drops to a fresh high uid and execs bwrap,
which then creates its user namespace unprivileged.

Limits inside the sandbox (rlimits, the host's wall clock and memory polls) are the callers':
what the code tool's runner sets does not suit Chromium, and the other way round.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

BWRAP = "bwrap"  # name or path of the bubblewrap binary
LAUNCHER = Path(__file__).with_name("sandbox_launcher.py")  # root hosts only: stages binds, drops the uid
STAGING = "/mnt"  # only in the private mount namespace of a root host's launcher
_UID_BASE, _UID_RANGE = 2_000_000_000, 100_000_000  # uids for sandboxes started by root


def bwrap_command(
    bwrap: str,
    inner: Sequence[str],
    binds: Sequence[tuple[str, str]],
    env: Mapping[str, str],
    tmpfs: Sequence[tuple[str, int]],
    chdir: str,
) -> list[str]:
    """The argv that runs ``inner`` (paths as the sandbox sees them) in a fresh sandbox: ``binds``
    (host path, sandbox path) read-only besides ``/usr``, ``tmpfs`` (sandbox path, bytes) the only
    writable folders, ``chdir`` the working folder. As root: through the launcher (a fresh uid)."""
    if os.geteuid() != 0:
        return [bwrap, *_args(binds, env, tmpfs, chdir), "--", *inner]
    stage = [(src, f"{STAGING}/{i}") for i, (src, _) in enumerate(binds)]
    staged = [(staged_src, dest) for (_, staged_src), (_, dest) in zip(stage, binds, strict=True)]
    uid = _UID_BASE + secrets.randbelow(_UID_RANGE)  # fresh uid: no shared RLIMIT_NPROC count
    job = {
        "staging": STAGING,
        "stage": stage,
        "uid": uid,
        "argv": [bwrap, *_args(staged, env, tmpfs, chdir), "--", *inner],
    }
    return [os.path.realpath(sys.executable), "-I", "-S", str(LAUNCHER.resolve()), json.dumps(job)]


def _args(
    binds: Sequence[tuple[str, str]], env: Mapping[str, str], tmpfs: Sequence[tuple[str, int]], chdir: str
) -> list[str]:
    args = [
        "--unshare-all",
        "--unshare-user",
        "--disable-userns",
        "--die-with-parent",
        "--new-session",
        "--clearenv",
    ]
    for key, value in env.items():
        args += ["--setenv", key, value]
    args += ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):  # usrmerge: /lib -> usr/lib
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    # A tmpfs goes in before the binds, so a bind inside it (a checkout or venv under /tmp) stays
    # visible instead of being covered; those under /dev go in after /dev, before it turns read-only.
    in_dev = [(p, n) for p, n in tmpfs if p == "/dev" or p.startswith("/dev/")]
    for path, size in [t for t in tmpfs if t not in in_dev]:
        args += ["--size", str(size), "--tmpfs", path]
    for src, dest in binds:
        args += ["--ro-bind", src, dest]
    args += ["--proc", "/proc", "--dev", "/dev"]
    for path, size in in_dev:
        args += ["--size", str(size), "--tmpfs", path]
    # Neither remount is recursive: the tmpfs folders stay writable.
    args += ["--remount-ro", "/dev", "--chdir", chdir]
    return [*args, "--remount-ro", "/"]
