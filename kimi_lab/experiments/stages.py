"""Stages that every multi-run experiment chains: a training run that resumes or is kept.

``kimi-lab experiment NAME`` reruns are cheap: a stage whose run folder already
finished is kept, an interrupted one resumes from its newest checkpoint. ``run_jobs``
runs independent stages side by side (one process each: on a 2-core machine two
one-thread processes finish a chain in about half the time of one).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kimi_lab.errors import KimiLabError
from kimi_lab.metrics import CHECKPOINT_DIR, LAST_CHECKPOINT, STATUS_FILE


def _finished(run_dir: Path) -> bool:
    try:
        return json.loads((run_dir / STATUS_FILE).read_text()).get("status") == "finished"
    except (OSError, json.JSONDecodeError):
        return False


def train_stage(run_dir: Path, overrides: list[str], tag: str | None = None) -> Path:
    """One ``kimi-lab train`` run into ``run_dir`` (skipped when it already finished).

    ``tag`` prefixes the progress lines; by default the experiment the overrides name."""
    if tag is None:
        named = [o.split("=", 1)[1] for o in overrides if o.startswith("experiment=")]
        tag = named[0].split("/")[0] if named else "experiment"
    last = run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT
    if _finished(run_dir) and last.is_file():
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
    """One stage of an experiment: ``fn()`` once every job named in ``after`` has finished."""

    fn: Callable[[], Any]
    after: tuple[str, ...] = ()


def run_jobs(jobs: dict[str, Job], workers: int = 1) -> dict[str, Any]:
    """Every job, up to ``workers`` at a time (each a process of its own: a training stage, or an
    evaluation in ``in_process_pool``), in an order the ``after`` edges allow; their results by name.
    The first failure stops new jobs from starting and is raised once the running ones end."""
    from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

    unknown = {d for j in jobs.values() for d in j.after} - set(jobs)
    if unknown:
        raise ValueError(f"jobs wait on unknown jobs: {sorted(unknown)}")
    done: dict[str, Any] = {}
    running: dict[Future, str] = {}
    failure: BaseException | None = None
    with ThreadPoolExecutor(max(1, workers)) as pool:
        while len(done) < len(jobs):
            if failure is None:
                for name, job in jobs.items():
                    busy = name in done or name in running.values()
                    if not busy and len(running) < workers and all(d in done for d in job.after):
                        running[pool.submit(job.fn)] = name
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                name = running.pop(fut)
                try:
                    done[name] = fut.result()
                except BaseException as exn:  # kept, and raised once the running jobs end
                    failure = failure or exn
    if failure is not None:
        raise failure
    return done


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
