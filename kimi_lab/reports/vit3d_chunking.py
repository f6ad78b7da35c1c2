"""Report of ``experiment=vit3d_chunking``: joint space-time chunks vs per-frame encoding (K2.5).

K2.5's design, from PAPER_NOTES: up to 4 consecutive frames form one chunk that one
attention spans (space and time), then the chunk is averaged over time (4x temporal
compression). The claim under test: that beats encoding each frame alone (then the
same averaging, so the LM sees the same number of tokens) on motion, which a single
frame cannot show. The measures are the caption loss of motion-labelled clips and,
since most caption words (shape, colour) one frame shows, the loss on the motion
words alone (direction, event frame: ``val/video/motion_loss``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from kimi_lab.metrics import VAL_SOURCE_LOSS, VAL_SOURCE_SUBSET_LOSS
from kimi_lab.reports.runs import Run, plot_series
from kimi_lab.reports.seeds import compare, group, seeds_note

ORDER = ("joint", "per_frame")
VIDEO_LOSS = VAL_SOURCE_LOSS.format(source="video")
MOTION_LOSS = VAL_SOURCE_SUBSET_LOSS.format(source="video", subset="motion")
VERDICTS = {
    "lower": "lower beyond the seed spread: joint chunks win, as K2.5 claims",
    "higher": "higher beyond the seed spread: this run contradicts K2.5's claim",
    "within spread": "within the seed spread: this run neither confirms nor refutes K2.5's claim",
    "one seed": "from one seed only: no claim either way",
}


def summarise(runs: list[Run]) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        val, motion = run.series(VIDEO_LOSS), run.series(MOTION_LOSS)
        rows.append(
            {
                "arm": run.get("model.vision.temporal_attention"),
                "job": run.path.name,
                "seed": run.get("seed"),
                "final_video_val_loss": run.final(VIDEO_LOSS, last=2),
                "best_video_val_loss": float(val.min()) if len(val) else math.nan,
                "best_step": int(val.idxmin()) if len(val) else None,
                "last_step": int(val.index.max()) if len(val) else None,
                # clips built before captions marked their motion words (video/1) have none
                "final_motion_val_loss": run.final(MOTION_LOSS, last=2),
                "best_motion_val_loss": float(motion.min()) if len(motion) else math.nan,
            }
        )
    rows.sort(key=lambda r: (ORDER.index(r["arm"]) if r["arm"] in ORDER else 9, r["seed"] or 0))
    return rows


def findings(rows: list[dict[str, Any]]) -> list[str]:
    by = group(rows, "arm", "final_video_val_loss")
    if not {"joint", "per_frame"} <= set(by) or not (by["joint"].n and by["per_frame"].n):
        return ["Both arms (joint, per_frame) are needed for a comparison."]
    j, f = by["joint"], by["per_frame"]
    out = [
        f"Final video caption val loss: joint {j.fmt()} vs per-frame {f.fmt()} "
        f"({j.mean - f.mean:+.3f}); the difference is {VERDICTS[compare(j, f)]}."
    ]
    motion = group(rows, "arm", "final_motion_val_loss")
    if motion["joint"].n and motion["per_frame"].n:
        mj, mf = motion["joint"], motion["per_frame"]
        out.append(
            f"Final val loss on the motion words alone (direction, event frame): joint {mj.fmt()} vs "
            f"per-frame {mf.fmt()} ({mj.mean - mf.mean:+.3f}); the difference is {VERDICTS[compare(mj, mf)]}."
        )
    else:
        out.append(
            f"No motion-word loss was logged ({MOTION_LOSS}): the clips predate captions with marked "
            "motion words; rebuild them (kimi-lab data build video) to measure it."
        )
    best = group(rows, "arm", "best_video_val_loss")
    if best["joint"].n and best["per_frame"].n:
        out.append(
            f"Best video val loss over training: joint {best['joint'].fmt()} vs per-frame "
            f"{best['per_frame'].fmt()} ({compare(best['joint'], best['per_frame'])})."
        )
    early = [r for r in rows if r["best_step"] is not None and r["best_step"] <= r["last_step"] / 2]
    if early and len(early) * 2 > len(rows):
        out.append(
            f"In {len(early)} of {len(rows)} runs the val loss is lowest in the first half of training and "
            "rises after: the runs over-fit the training clips, which weakens the comparison; more clips "
            "(kimi-lab data build video --n N) or fewer steps fix that."
        )
    out.append(seeds_note(rows))
    return out


def write(runs: list[Run], folder: Path) -> Path:
    rows = summarise(runs)
    plot_series(
        runs,
        VIDEO_LOSS,
        "model.vision.temporal_attention",
        folder / "vit3d_chunking.png",
        "video caption val loss",
    )
    found = findings(rows)
    lines = [
        "# MoonViT-3D: joint 4-frame chunks vs per-frame encoding (same token count)",
        "",
        "| temporal attention | seed | final video val loss | best video val loss | at step "
        "| final motion-word val loss |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['arm']} | {r['seed']} | {r['final_video_val_loss']:.3f} | {r['best_video_val_loss']:.3f} "
            f"| {r['best_step']} | {r['final_motion_val_loss']:.3f} |"
        )
    lines += ["", "![video loss](vit3d_chunking.png)", "", "## What this run shows", ""]
    lines += [f"- {f}" for f in found]
    lines += [
        "",
        "## K2.5's design",
        "",
        "- Up to 4 frames per chunk, one attention over the chunk's space and time, then a temporal mean:",
        "  4x temporal compression, weights shared with images. Joint chunks should beat per-frame encoding on",
        "  motion at the same token count (PAPER_NOTES, findings 4).",
    ]
    out = folder / "report.md"
    out.write_text("\n".join(lines) + "\n")
    (folder / "report.json").write_text(
        json.dumps({"experiment": "vit3d_chunking", "arms": rows, "findings": found}, indent=2, default=str)
    )
    return out
