"""``kimi-lab data build zero-vision-sft``: text-only tool-use trajectories (K2.5 zero-vision SFT).

Each sample is one verified trajectory as a chat record: system, user (the text
picture), assistant (a plan and a ``python`` call with the reference program),
tool (the sandbox's real output), assistant (``Answer: ...``); plus ``task`` and
``files``. Trajectories whose program does not print the ground truth are
dropped and counted (``failed``). ``--with-visual-traces`` turns a fraction of
the samples into image trajectories (their images as ``image_N.png``), the
variant K2.5 reports hurts generalisation.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from data_pipelines.common import ShardSink
from data_pipelines.visual_tasks import task_sample
from kimi_lab.errors import DataError
from kimi_lab.tasks.solve import check_sandbox
from kimi_lab.tasks.text_twins import sft_traces

BUILDER_VERSION = "zero-vision-sft/1"
log = logging.getLogger(__name__)


def build_zero_vision_sft(
    out: str | Path,
    n: int = 200,
    seed: int = 0,
    with_visual_traces: bool = False,
    visual_fraction: float = 0.2,
    val_fraction: float = 0.05,
    shard_bytes: int = 256_000,
    progress: bool = True,
) -> dict[str, Any]:
    from tqdm import tqdm

    if not 0.0 <= visual_fraction <= 1.0:
        raise DataError(f"--visual-fraction {visual_fraction}: expected a fraction in [0, 1]")
    check_sandbox()  # fail before the folder's previous shards are removed
    sink = ShardSink(out, val_fraction, shard_bytes)
    traces = sft_traces(n, seed, with_visual_traces=with_visual_traces, visual_fraction=visual_fraction)
    first_failure = ""
    try:
        for i, trace in enumerate(
            tqdm(traces, total=n, desc="zero-vision-sft", unit="traj", disable=not progress)
        ):
            task = trace.task
            if trace.messages is None:
                sink.count("failed")
                first_failure = first_failure or f"{task.id}: {trace.error}"
                log.warning("zero-vision-sft: %s does not verify: %s", task.id, trace.error)
                continue
            sink.count("verified")
            sink.count(f"{task.modality}_traces")
            record = task.to_record(
                f"zero-vision-{task.family}-{task.modality}",
                trace.messages,
                generator=BUILDER_VERSION,
                seed=seed,
                index=i,
            )
            sink.write(task_sample(task, record))
    finally:
        manifest = sink.close(
            "zero-vision-sft",
            "chat",
            seed,
            BUILDER_VERSION,
            with_visual_traces=with_visual_traces,
            visual_fraction=visual_fraction if with_visual_traces else 0.0,
        )
    if n and not manifest["counts"].get("verified"):
        raise DataError(f"no trajectory verified in the sandbox (first: {first_failure})")
    return manifest
