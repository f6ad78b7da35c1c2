"""Run a function in N CPU processes joined by gloo (what ``torchrun`` would do, in a test)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _entry(rank: int, fn: Callable[..., Any], world: int, folder: str, args: tuple) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    try:
        out = fn(rank, world, *args)
        torch.save(out, Path(folder) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_ranks(fn: Callable[..., Any], world: int, folder: Path, *args: Any) -> list[Any]:
    """``fn(rank, world, *args)`` on every rank (a module-level function); what each returned."""
    folder.mkdir(parents=True, exist_ok=True)
    mp.spawn(_entry, args=(fn, world, str(folder), args), nprocs=world, join=True)
    return [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(world)]
