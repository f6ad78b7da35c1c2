"""Image-code, video and interleaved shards; mixing, the fusion schedule, resume, bad input."""

from __future__ import annotations

import io
import itertools
import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from data_pipelines.inspect import inspect_dir
from kimi_lab.config.schema import DataConfig, FusionConfig, SourceConfig, VisionDataConfig
from kimi_lab.data.datamodule import KimiDataModule
from kimi_lab.data.decode import decode_image, decode_video
from kimi_lab.data.shards import resolve_shards
from kimi_lab.data.stream import MixedStream, SourceSpec
from kimi_lab.data.tokenizer import Tokenizer
from kimi_lab.errors import ConfigError, DataError

VISION = VisionDataConfig(max_patches=144)


def spec(name: str, path: Path, weight: float = 1.0, split: str = "train") -> SourceSpec:
    vision = name != "text"
    return SourceSpec(name, resolve_shards(str(path), split), weight, vision)


def data_cfg(tokenizer: Path, **changes: Any) -> DataConfig:
    base: dict[str, Any] = {
        "sources": {},
        "tokenizer": str(tokenizer),
        "seq_len": 96,
        "batch_size": 4,
        "shuffle_buffer": 0,
        "vision": VISION,
    }
    base.update(changes)
    return DataConfig(**base)


# ------------------------------------------------------------------------ builders
def test_image_code_pairs_come_from_real_renderers(image_code_shards: Path) -> None:
    manifest = json.loads((image_code_shards / "manifest.json").read_text())
    assert manifest["modality"] == "image"
    assert manifest["renderers"]["svg"].startswith("resvg-py")
    assert manifest["renderers"]["html"].startswith("chromium")
    languages = set()
    for url in resolve_shards(str(image_code_shards), "train"):  # stock webdataset reads them
        for sample in wds.WebDataset(url, shardshuffle=False).decode("pil"):
            record = sample["json"]
            lang = record["provenance"]["language"]
            languages.add(lang)
            image = sample["png"]
            assert image.size == (record["provenance"]["width"], record["provenance"]["height"])
            pixels = np.asarray(image.convert("RGB"))
            assert pixels.std() > 5  # something was drawn, not a blank canvas
            code = sample[lang].decode() if isinstance(sample[lang], bytes) else sample[lang]
            assert code.lstrip().startswith("<svg" if lang == "svg" else "<!DOCTYPE html>")
    assert languages == {"svg", "html"}


def test_svg_colours_match_the_program(image_code_shards: Path) -> None:
    """The rendered background is exactly the colour the SVG program asks for."""
    url = resolve_shards(str(image_code_shards), "train")[0]
    with tarfile.open(url) as tar:
        names = tar.getnames()
        key = next(n[: -len(".svg")] for n in names if n.endswith(".svg"))
        svg = tar.extractfile(key + ".svg").read().decode()
        png = tar.extractfile(key + ".png").read()
    bg = svg.split("<rect width=")[1].split('fill="')[1][:7]
    pixel = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))[0, -1]  # top-right corner
    assert tuple(pixel) == tuple(int(bg[i : i + 2], 16) for i in (1, 3, 5))


def test_video_clips_decode_with_their_labels(video_shards: Path) -> None:
    sizes = set()
    for url in resolve_shards(str(video_shards), "train"):
        with tarfile.open(url) as tar:
            members = {m.name: m for m in tar}
            for name in [n for n in members if n.endswith(".mp4")]:
                key = name[:-4]
                frames = decode_video(tar.extractfile(members[name]).read())
                record = json.loads(tar.extractfile(members[key + ".json"]).read())
                labels = record["provenance"]["labels"]
                assert frames.shape[0] == labels["frames"] and list(frames.shape[2:0:-1]) == labels["size"]
                sizes.add(frames.shape[:3])
                caption = tar.extractfile(members[key + ".txt"]).read().decode()
                assert labels["shape"] in caption and labels["colour"] in caption
                if labels["event"] == "appear":  # the shape is absent before its frame, present after
                    first, last = frames[0].astype(int), frames[-1].astype(int)
                    assert np.abs(first - 245).max() < 12 and np.abs(last - 245).max() > 60
    assert len(sizes) > 3  # variable frame counts and sizes


def test_motion_words_are_marked_as_a_loss_subset(video_shards: Path, tiny_tokenizer: Path) -> None:
    """Caption spans become per-token subset bits that survive packing; the tokens are the
    caption's own (encoding span by span changes nothing), and only motion words are marked."""
    from kimi_lab.data.decode import Decoder, SampleSkip

    tok = Tokenizer(tiny_tokenizer)
    decoder = Decoder(tok, VISION)
    sample = next(iter(wds.WebDataset(resolve_shards(str(video_shards), "train")[0], shardshuffle=False)))
    doc = decoder(sample)
    caption, record = sample["txt"].decode(), json.loads(sample["json"])
    ((start, end),) = record["loss_spans"]["motion"]
    text_ids = doc.segments[-1]
    assert text_ids == tok.encode(caption) and len(doc.marks) == sum(
        s.n_tokens + 2 if not isinstance(s, list) else len(s) for s in doc.segments
    )
    marked = [t for t, m in zip(text_ids, doc.marks[-len(text_ids) :]) if m]
    assert tok.decode(marked) == caption[start:end]  # " left" or " 7": the word only motion shows

    stream = MixedStream([spec("video", video_shards)], data_cfg(tiny_tokenizer, seq_len=128), train=True)
    words = set()
    for batch in itertools.islice(iter(stream), 3):
        subset = batch["loss_subsets"].bool() & batch["loss_mask"]  # bit 0: "motion"
        assert subset.any() and not (batch["loss_subsets"].bool() & ~batch["loss_mask"]).any()
        for row, targets in zip(subset.tolist(), batch["tokens"][:, 1:].tolist(), strict=True):
            runs = itertools.groupby(zip(row, targets, strict=True), key=lambda x: x[0])
            words |= {tok.decode([t for _, t in run]).strip() for marked, run in runs if marked}
    assert words and words <= {"left", "right", "up", "down", *map(str, range(20))}

    for bad in ({"colour": [[0, 3]]}, {"motion": [[5, 999]]}, {"motion": "0-3"}):
        broken = dict(sample, json=json.dumps({**record, "loss_spans": bad}).encode())
        with pytest.raises(SampleSkip, match="bad_json"):
            decoder(broken)


def test_interleaved_documents_keep_order(interleaved_shards: Path) -> None:
    url = resolve_shards(str(interleaved_shards), "train")[0]
    sample = next(iter(wds.WebDataset(url, shardshuffle=False)))
    record = json.loads(sample["json"])
    kinds = ["image" if "image" in s else "text" for s in record["segments"]]
    assert kinds[0] == "text" and "image" in kinds
    for seg in record["segments"]:
        if "image" in seg:
            assert decode_image(sample[seg["image"]]).ndim == 3
    i = kinds.index("image")
    assert record["segments"][i + 1]["text"].startswith("Figure 1:")


def test_inspect_reports_counts_modalities_and_failures(image_code_shards: Path, tmp_path: Path) -> None:
    report = inspect_dir(image_code_shards)
    assert report["totals"]["modalities"] == {"image": report["totals"]["samples"]}
    assert not any(report["totals"]["failures"].values())
    assert report["previews"] and report["previews"][0]["parts"][0]["image"]
    bad = tmp_path / "bad"
    bad.mkdir()
    _write_shard(bad / "train-000000.tar", _bad_samples())
    report = inspect_dir(bad)
    failures = {k: v for k, v in report["totals"]["failures"].items() if v}
    assert failures == {"bad_image": 1, "bad_video": 1, "missing_key": 1, "schema_version": 1}
    assert report["totals"]["modalities"] == {"text": 1}


# ----------------------------------------------------------------- packing, mixing
def test_vision_blocks_are_packed_with_their_grids(
    image_code_shards, video_shards, interleaved_shards, tiny_tokenizer
) -> None:
    tok = Tokenizer(tiny_tokenizer)
    image_id, video_id = tok.token_id("<|image_pad|>"), tok.token_id("<|video_pad|>")
    start, end = tok.token_id("<|media_start|>"), tok.token_id("<|media_end|>")
    cfg = data_cfg(tiny_tokenizer)
    specs = [spec("ic", image_code_shards), spec("video", video_shards), spec("il", interleaved_shards)]
    seen = {"image": 0, "video": 0}
    for batch in itertools.islice(iter(MixedStream(specs, cfg, train=True)), 12):
        tokens = batch["tokens"]
        inputs = tokens[:, :-1]
        assert inputs.shape == (4, 96)
        # one placeholder run per image / video chunk, of h*w/4 tokens, whole inside one window's inputs
        runs: dict[str, list[int]] = {"image": [], "video": []}
        for row in inputs.tolist():
            i = 0
            while i < len(row):
                if row[i] == start:
                    j = row.index(end, i)
                    body = row[i + 1 : j]
                    kind = "image" if body.count(image_id) else "video"
                    assert body.count(image_id if kind == "image" else video_id) == len(body)
                    runs[kind].append(len(body))
                    i = j
                i += 1
        for kind, pixels, grid in (
            ("image", "pixel_values", "image_grid_thw"),
            ("video", "pixel_values_videos", "video_grid_thw"),
        ):
            g = batch[grid]
            assert runs[kind] == [h * w // 4 for _, h, w in g.tolist()]
            assert (
                all(t == 1 for t, _, _ in g.tolist())
                if kind == "image"
                else all(1 <= t <= 4 for t, _, _ in g.tolist())
            )
            assert batch[pixels].shape == (int((g[:, 0] * g[:, 1] * g[:, 2]).sum()), 3, 14, 14)
            if len(g):
                assert batch[pixels].abs().max() <= 1.0  # normalised to [-1, 1]
            seen[kind] += len(g)
        targets = tokens[:, 1:]
        text = ~(torch.isin(targets, torch.tensor([image_id, video_id, start, end, tok.pad_id])))
        assert torch.equal(batch["loss_mask"], text)
    assert seen["image"] > 0 and seen["video"] > 0


@pytest.mark.parametrize(
    "ratio", [0.1, pytest.param(0.5, marks=pytest.mark.slow)]
)  # 0.5: 21 s, same code path
def test_fusion_ratio_holds_within_two_percent(
    ratio, tiny_shards, image_code_shards, video_shards, interleaved_shards, tiny_tokenizer
) -> None:
    cfg = data_cfg(
        tiny_tokenizer, fusion=FusionConfig(vision_start=0.0, vision_ratio=ratio), batch_size=8, seq_len=128
    )
    specs = [
        spec("text", tiny_shards),
        spec("ic", image_code_shards),
        spec("video", video_shards),
        spec("il", interleaved_shards),
    ]
    vision = total = 0
    for batch in iter(MixedStream(specs, cfg, train=True)):
        vision += batch["meta"]["stats"].vision_source_tokens
        total += batch["meta"]["stats"].tokens
        if batch["meta"]["state"]["mixer"]["draws"] >= 2500:  # a few thousand samples
            break
    assert abs(vision / total - ratio) < 0.02


def test_source_weights_without_a_ratio(tiny_shards, image_code_shards, tiny_tokenizer) -> None:
    cfg = data_cfg(tiny_tokenizer)
    stream = MixedStream(
        [spec("text", tiny_shards, 3.0), spec("ic", image_code_shards, 1.0)], cfg, train=True
    )
    for batch in iter(stream):
        drawn = batch["meta"]["state"]["shuffles"]  # documents drawn per source
        if drawn["text"] + drawn["ic"] >= 1500:
            break
    share = drawn["text"] / (drawn["text"] + drawn["ic"])
    assert abs(share - 0.75) < 0.04  # binomial sd ~0.011


def test_vision_starts_when_the_schedule_says(tiny_shards, image_code_shards, tiny_tokenizer) -> None:
    cfg = data_cfg(tiny_tokenizer, fusion=FusionConfig(vision_start=0.5, vision_ratio=0.3), batch_size=2)
    stream = MixedStream(
        [spec("text", tiny_shards), spec("ic", image_code_shards)], cfg, train=True, vision_start_step=40
    )
    before, after = [], []
    for batch in itertools.islice(iter(stream), 200):
        step = batch["meta"]["batch_index"]
        stats = batch["meta"]["stats"]
        (before if step < 40 else after).append(
            (stats.vision_source_tokens, stats.tokens, stats.vision_ratio_target)
        )
    assert sum(v for v, _, _ in before) == 0 and all(t == 0.0 for _, _, t in before)
    ratio = sum(v for v, _, _ in after[10:]) / sum(n for _, n, _ in after[10:])
    assert abs(ratio - 0.3) < 0.05 and all(t == 0.3 for _, _, t in after)


# ----------------------------------------------------------------------- resume
def _keys(batches: list[dict]) -> list[str]:
    return [k for b in batches for k in b["meta"]["keys"]]


def test_restored_stream_continues_exactly(
    tiny_shards, image_code_shards, video_shards, tiny_tokenizer
) -> None:
    """Without a shuffle buffer the resumed stream equals the uninterrupted one, batch for batch."""
    cfg = data_cfg(tiny_tokenizer, fusion=FusionConfig(vision_ratio=0.3))
    specs = [spec("text", tiny_shards), spec("ic", image_code_shards), spec("video", video_shards)]
    full = list(itertools.islice(iter(MixedStream(specs, cfg, train=True)), 30))
    state = full[11]["meta"]["state"]  # consumed 12 batches, then the run stopped
    resumed = list(
        itertools.islice(iter(MixedStream(specs, cfg, train=True, states={0: state}, first_batch=12)), 18)
    )
    for a, b in zip(full[12:], resumed):
        assert torch.equal(a["tokens"], b["tokens"])
        for key in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw"):
            assert torch.equal(a[key], b[key])
        assert a["meta"]["batch_index"] == b["meta"]["batch_index"]


def test_resume_with_shuffle_buffer_repeats_nothing(tiny_shards, tiny_tokenizer) -> None:
    buffer = 16
    cfg = data_cfg(tiny_tokenizer, shuffle_buffer=buffer, seq_len=32)
    specs = [spec("text", tiny_shards)]
    full = list(itertools.islice(iter(MixedStream(specs, cfg, train=True)), 60))
    first = full[:20]
    resumed = list(
        itertools.islice(
            iter(MixedStream(specs, cfg, train=True, states={0: first[-1]["meta"]["state"]}, first_batch=20)),
            40,
        )
    )
    seen, again = _keys(first), _keys(resumed)
    assert not set(seen) & set(again)  # nothing repeated
    reference = set(_keys(full))
    skipped = reference - set(seen) - set(again)
    assert len(skipped) <= buffer + 2  # at most the shuffle buffer (and the partial window's document)


def test_datamodule_saves_and_restores_positions_across_workers(tiny_shards, tiny_tokenizer) -> None:
    cfg = data_cfg(
        tiny_tokenizer, sources={"text": SourceConfig(str(tiny_shards))}, num_workers=2, seq_len=32
    )
    dm = KimiDataModule(cfg, vocab_size=512, max_steps=100)
    dm.setup("fit")
    dm.trainer = type("T", (), {"training": True})()
    full = []
    for batch in itertools.islice(iter(dm.train_dataloader()), 13):
        full.append(batch["tokens"])
        dm.on_before_batch_transfer(batch, 0)
    state = dm.state_dict()  # after 13 batches: worker 1 yields next
    assert state["ranks"][0]["batches"] == 13

    reference = KimiDataModule(cfg, vocab_size=512, max_steps=100)
    reference.setup("fit")
    expected = [b["tokens"] for b in itertools.islice(iter(reference.train_dataloader()), 20)]
    assert all(torch.equal(a, b) for a, b in zip(full, expected))

    resumed = KimiDataModule(cfg, vocab_size=512, max_steps=100)
    resumed.setup("fit")
    resumed.load_state_dict(json.loads(json.dumps(state)))  # it survives a checkpoint's round trip
    after = [b["tokens"] for b in itertools.islice(iter(resumed.train_dataloader()), 7)]
    assert all(torch.equal(a, b) for a, b in zip(after, expected[13:]))


# -------------------------------------------------------------------- bad input
def _write_shard(path: Path, samples: list[dict[str, Any]]) -> None:
    with wds.TarWriter(str(path)) as w:
        for s in samples:
            w.write(s)


def _record(modality: str, version: int = 1) -> bytes:
    return json.dumps(
        {"schema_version": version, "modality": modality, "source": "test", "provenance": {}}
    ).encode()


def _bad_samples() -> list[dict[str, Any]]:
    return [
        {"__key__": "png", "json": _record("image"), "png": b"\x89PNG not really", "svg": b"<svg/>"},
        {"__key__": "mp4", "json": _record("video"), "mp4": b"\x00\x00\x00 ftyp garbage", "txt": b"a clip"},
        {"__key__": "nokey", "json": _record("image"), "svg": b"<svg/>"},
        {"__key__": "future", "json": _record("text", version=99), "txt": b"from the future"},
        {"__key__": "good", "json": _record("text"), "txt": b"a perfectly fine sample " * 20},
    ]


def test_bad_samples_are_skipped_and_counted_by_reason(tmp_path: Path, tiny_tokenizer: Path) -> None:
    root = tmp_path / "bad"
    root.mkdir()
    _write_shard(root / "train-000000.tar", _bad_samples())
    good = (root / "train-000000.tar").read_bytes()
    (root / "train-000001.tar").write_bytes(
        good[: len(good) // 2] + b"\x00garbage" * 64
    )  # corrupt tar member
    cfg = data_cfg(tiny_tokenizer, seq_len=16, batch_size=1)
    stream = MixedStream(
        [SourceSpec("mixed", resolve_shards(str(root), "train"), 1.0, False)], cfg, train=True
    )
    *_, last = itertools.islice(iter(stream), 40)
    skipped = last["meta"]["skipped"]
    for reason in ("bad_image", "bad_video", "missing_key", "schema_version", "corrupt_tar"):
        assert skipped.get(reason, 0) >= 1, (reason, skipped)


def test_strict_mode_names_the_shard_and_the_key(tmp_path: Path, tiny_tokenizer: Path) -> None:
    root = tmp_path / "bad"
    root.mkdir()
    _write_shard(root / "train-000000.tar", _bad_samples())
    cfg = data_cfg(tiny_tokenizer, seq_len=16, batch_size=1, strict=True)
    stream = MixedStream(
        [SourceSpec("mixed", resolve_shards(str(root), "train"), 1.0, False)], cfg, train=True
    )
    with pytest.raises(DataError) as err:
        next(iter(stream))
    message = str(err.value)
    assert "train-000000.tar" in message and "sample png" in message and "bad_image" in message


def test_a_source_with_nothing_usable_fails_clearly(tmp_path: Path, tiny_tokenizer: Path) -> None:
    root = tmp_path / "bad"
    root.mkdir()
    _write_shard(root / "train-000000.tar", _bad_samples()[:4])
    cfg = data_cfg(tiny_tokenizer, seq_len=16, batch_size=1)
    stream = MixedStream(
        [SourceSpec("broken", resolve_shards(str(root), "train"), 1.0, False)], cfg, train=True
    )
    with pytest.raises(DataError, match="source 'broken': no usable sample"):
        next(iter(stream))


def test_fewer_shards_than_workers_is_a_clear_error(tiny_tokenizer: Path, image_code_shards: Path) -> None:
    n = len(resolve_shards(str(image_code_shards), "train"))
    cfg = data_cfg(tiny_tokenizer, sources={"ic": SourceConfig(str(image_code_shards))}, num_workers=n + 1)
    with pytest.raises(DataError, match=rf"{n} train shard\(s\) for 1 rank\(s\) x {n + 1} worker"):
        KimiDataModule(cfg, vocab_size=512).setup("fit")


def test_images_longer_than_a_window_are_refused_at_start(
    tiny_tokenizer: Path, image_code_shards: Path
) -> None:
    cfg = data_cfg(
        tiny_tokenizer,
        sources={"ic": SourceConfig(str(image_code_shards))},
        seq_len=64,
        vision=VisionDataConfig(max_patches=576),
    )
    with pytest.raises(
        ConfigError,
        match=r"data.vision.max_patches=576 makes an image up to 146 tokens, more than data.seq_len=64",
    ):
        KimiDataModule(cfg, vocab_size=512).setup("fit")


def test_pipe_urls_need_an_explicit_opt_in(tiny_tokenizer: Path) -> None:
    with pytest.raises(DataError, match="allow_unsafe_urls"):
        resolve_shards("pipe:curl -s http://example.com/shard.tar", "train")
    assert resolve_shards("pipe:cat a.tar", "train", allow_unsafe=True) == ["pipe:cat a.tar"]


def test_shards_are_plain_tar_files(video_shards: Path) -> None:
    url = resolve_shards(str(video_shards), "train")[0]
    with tarfile.open(url) as tar:
        exts = {Path(n).suffix for n in tar.getnames()}
    assert exts == {".mp4", ".txt", ".json"}
