"""Run a function in N local processes joined by a process group, as ``torchrun`` would
(used by the expert-parallel benchmark and tests; training goes through Lightning)."""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _entry(
    rank: int, fn: Callable[..., Any], world: int, folder: str, backend: str, threads: int, args: tuple
) -> None:
    torch.set_num_threads(threads)
    dist.init_process_group(backend, init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    try:
        out = fn(rank, world, *args)
        torch.save(out, Path(folder) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_ranks(
    fn: Callable[..., Any],
    world: int,
    folder: Path,
    *args: Any,
    backend: str = "gloo",
    threads: int = 1,
) -> list[Any]:
    """``fn(rank, world, *args)`` (a module-level function) on every rank; what each returned.

    ``folder`` holds the rendezvous file and the results; ``threads`` torch threads per rank.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rendezvous").unlink(missing_ok=True)
    with _bare_main(fn):
        mp.spawn(_entry, args=(fn, world, str(folder), backend, threads, args), nprocs=world, join=True)
    return [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(world)]


@contextlib.contextmanager
def _bare_main(fn: Callable[..., Any]) -> Iterator[None]:
    """Spawned processes re-run the parent's ``__main__`` file before anything else. When ``fn``
    lives elsewhere, hide that file from them: the parent's main may be a script that must not
    run twice (a Streamlit page executed in-process, a notebook, a test runner's)."""
    if fn.__module__ == "__main__":
        yield
        return
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main
