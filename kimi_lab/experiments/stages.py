"""Stages that every multi-run experiment chains: a training run that resumes or is kept.

``kimi-lab experiment NAME`` reruns are cheap: a stage whose run folder already
finished is kept, an interrupted one resumes from its newest checkpoint. ``run_jobs``
runs a chain's independent stages side by side, one per core.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kimi_lab.errors import KimiLabError
from kimi_lab.metrics import CHECKPOINT_DIR, LAST_CHECKPOINT
from kimi_lab.tracking.resume import is_finished

# Every stage of a ``--scale tiny`` chain on ``tiny-vl``: seconds per stage, conversations whole
# in one window, no validation to speak of; checks the chain, measures nothing.
TINY_VL_OVERRIDES = (
    "data.seq_len=2048",
    "data.batch_size=2",
    "data.vision.max_patches=64",
    "trainer.val_check_interval=1000",
    "trainer.limit_val_batches=1",
    "trainer.precision=32-true",
    "phase.schedule.warmup_steps=1",
    "model.max_seq_len=2048",
)


def train_stage(run_dir: Path, overrides: list[str], tag: str | None = None) -> Path:
    """One ``kimi-lab train`` run into ``run_dir`` (skipped when it already finished).

    ``tag`` prefixes the progress lines; by default the experiment the overrides name."""
    if tag is None:
        named = [o.split("=", 1)[1] for o in overrides if o.startswith("experiment=")]
        tag = named[0].split("/")[0] if named else "experiment"
    last = run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT
    if is_finished(run_dir) and last.is_file():
        print(f"[{tag}] {run_dir.name}: finished earlier, kept", flush=True)
        return last
    cmd = [
        sys.executable,
        "-m",
        "kimi_lab.cli",
        "train",
        *overrides,
        f"hydra.run.dir={run_dir}",
        "ckpt_path=auto",
    ]
    print(f"[{tag}] {run_dir.name}: kimi-lab train {' '.join(overrides)}", flush=True)
    t0 = time.time()
    res = subprocess.run(cmd, check=False)
    if res.returncode != 0 or not last.is_file():
        raise KimiLabError(f"{tag} stage {run_dir.name} failed (exit {res.returncode}); see {run_dir}")
    print(f"[{tag}] {run_dir.name}: done in {time.time() - t0:.0f}s", flush=True)
    return last


@dataclass(frozen=True)
class Job:
    """One stage of a chain: ``run()`` does it (a training subprocess, an evaluation); it starts once
    every job named in ``after`` has finished."""

    name: str
    run: Callable[[], Any]
    after: tuple[str, ...] = ()


def run_jobs(jobs: list[Job], slots: int) -> dict[str, Any]:
    """Run ``jobs``, at most ``slots`` at a time (one per core: each job runs one thread), a ready
    job starting as soon as a slot frees, earlier jobs in the list first; returns each job's result.

    A chain's stages are not a line: two SFTs from one pre-training, evaluations beside RL; on a
    2-core machine two one-thread jobs side by side take the time of one. When a job fails, no
    new job starts; the running ones finish (each keeps what it finished, so a rerun resumes)
    and the error is raised."""
    names = [j.name for j in jobs]
    unknown = {a for j in jobs for a in j.after} - set(names)
    if unknown or len(set(names)) != len(names):
        raise KimiLabError(f"run_jobs: unknown or repeated job names ({', '.join(sorted(unknown)) or names})")
    results: dict[str, Any] = {}
    pending = list(jobs)
    running: dict[Future[Any], str] = {}
    error: BaseException | None = None
    with ThreadPoolExecutor(max_workers=max(1, slots)) as pool:
        while pending or running:
            ready = [j for j in pending if all(a in results for a in j.after)]
            while error is None and ready and len(running) < max(1, slots):
                job = ready.pop(0)
                pending.remove(job)
                running[pool.submit(job.run)] = job.name
            if not running:
                if error is None:
                    raise KimiLabError(f"run_jobs: {', '.join(j.name for j in pending)} wait on each other")
                break  # what is left waits on a failed job
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                name = running.pop(future)
                try:
                    results[name] = future.result()
                except Exception as exn:  # the first failure stops the chain once running jobs end
                    error = error or exn
    if error is not None:
        raise error
    return results


def in_process_pool(workers: int, threads: int | None) -> Any:
    """A pool of ``workers`` fresh processes (spawned: no state copied from this one), each with
    ``threads`` torch threads: for evaluations run beside training stages."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(max(1, workers), mp.get_context("spawn"), _set_threads, (threads,))


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)
