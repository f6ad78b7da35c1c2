"""Page recordings: clips a person can watch, whose frames change exactly where their record says."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from data_pipelines.page_recordings import SCENES, TIMES_MS
from kimi_lab.data.decode import parse_sample
from kimi_lab.data.shards import iter_shard_samples


def _samples(folder: Path) -> list[dict]:
    return list(iter_shard_samples(iter(sorted(str(p) for p in folder.glob("*.tar"))), None))


def _changed(frames: np.ndarray) -> list[int]:
    """Frames that differ visibly from the one before (the codec's noise aside)."""
    diff = np.abs(frames[1:].astype(np.int16) - frames[:-1].astype(np.int16)).max(axis=-1)
    return [k + 1 for k, d in enumerate(diff) if (d > 48).sum() >= 20]


def test_recordings_change_where_their_record_says(page_recording_shards: Path) -> None:
    manifest = json.loads((page_recording_shards / "manifest.json").read_text())
    assert all(manifest["counts"][scene] == 1 for scene in SCENES) and manifest["counts"]["train"] == 6
    for sample in _samples(page_recording_shards):
        parsed = parse_sample(sample)  # as training decodes it: the clip, then the page's code
        (kind, frames), (text_kind, code) = parsed.parts
        prov = parsed.record["provenance"]
        assert kind == "video" and text_kind == "text" and code == sample["html"].decode()
        assert frames.shape == (len(TIMES_MS), prov["height"], prov["width"], 3)
        assert prov["changes"], f"{prov['labels']['scene']}: nothing happens"
        assert _changed(frames) == prov["changes"], prov["labels"]["scene"]
        assert prov["timeline"] and all(e["what"] in prov["caption"] for e in prov["timeline"])


def test_captions_pair_the_same_pictures_and_clips_with_captions(
    page_recording_shards: Path, image_code_shards: Path, tmp_path: Path
) -> None:
    from data_pipelines.captions import build_captions

    for src in (page_recording_shards, image_code_shards):
        out = tmp_path / src.name
        manifest = build_captions(out, src, progress=False)
        code = json.loads((src / "manifest.json").read_text())
        assert manifest["pairs"] == "caption" and manifest["modality"] == code["modality"]
        assert {k: manifest["counts"][k] for k in ("train", "val")} == {
            k: code["counts"][k] for k in ("train", "val")
        }
        twins = {s["__key__"]: s for s in _samples(src)}
        for sample in _samples(out):
            twin = twins[sample["__key__"]]  # the same key: the same picture or clip, in the same split
            record = json.loads(sample["json"])
            assert (
                not {"html", "svg"} & set(sample)
                and sample["txt"].decode() == record["provenance"]["caption"]
            )
            media = "mp4" if "mp4" in sample else "png"
            assert sample[media] == twin[media]
            assert parse_sample(sample).parts[-1] == ("text", record["provenance"]["caption"])
