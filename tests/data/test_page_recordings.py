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


def test_caption_builds_hold_the_same_pictures_and_clips(
    page_recording_shards: Path, image_code_shards: Path, tmp_path: Path
) -> None:
    from data_pipelines.image_code import build_image_code
    from data_pipelines.page_recordings import build_page_recordings

    build_page_recordings(str(tmp_path / "rec"), n=2, seed=0, caption=True, val_fraction=0.0, progress=False)
    build_image_code(tmp_path / "img", n=2, seed=0, caption=True, val_fraction=0.0, progress=False)
    code = {s["__key__"]: s for f in (page_recording_shards, image_code_shards) for s in _samples(f)}
    for folder in ("rec", "img"):
        for sample in _samples(tmp_path / folder):
            twin = code[sample["__key__"]]  # the same key: the same page, in the same split
            record = json.loads(sample["json"])
            assert "html" not in sample and "svg" not in sample and sample["txt"].decode().startswith("A ")
            if folder == "rec":
                assert sample["txt"].decode() == record["provenance"]["caption"]
                a, b = parse_sample(sample).parts[0][1], parse_sample(twin).parts[0][1]
                assert np.abs(a.astype(int) - b.astype(int)).max() <= 8  # the same clip
            else:
                assert sample["png"] == twin["png"]
