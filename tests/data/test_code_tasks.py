"""Code-from-pixels conversations: a screen recording in a prompt is video chunks the model reads."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from kimi_lab.config.schema import ToolConfig, VisionDataConfig
from kimi_lab.data.decode import Decoder
from kimi_lab.data.packing import SpecialIds
from kimi_lab.data.shards import iter_shard_samples
from kimi_lab.data.task_prompts import task_from_sample
from kimi_lab.data.tokenizer import Tokenizer
from kimi_lab.data.vision import VisionBlock
from kimi_lab.decode.generation import vision_inputs
from kimi_lab.rl.rollout import RolloutRunner

VISION = VisionDataConfig(max_patches=256, max_frames=8)


def test_sft_conversations_train_on_the_code_and_see_the_clip(
    code_task_shards: Path, tiny_tokenizer: Path
) -> None:
    from kimi_lab.config import compose, to_run_config
    from kimi_lab.model.multimodal import KimiK25

    tok = Tokenizer(tiny_tokenizer)
    cfg = to_run_config(
        compose(["model=tiny-vl", "model.max_seq_len=4096", f"data.tokenizer={tiny_tokenizer}"])
    )
    torch.manual_seed(0)
    model = KimiK25(cfg.model).eval()
    decoder, ids = Decoder(tok, VISION), SpecialIds.from_tokenizer(tok)
    samples = list(iter_shard_samples(iter(sorted(str(p) for p in code_task_shards.glob("*.tar"))), None))
    assert len(samples) == 3
    for sample in samples:
        record = json.loads(sample["json"])
        family, code = record["task"]["family"], record["task"]["answer"]["code"]
        doc = decoder(sample)
        blocks = [s for s in doc.segments if isinstance(s, VisionBlock)]
        if family == "html_recording":  # 8 frames: two chunks of 4, one placeholder run each
            assert [(b.kind, b.grid_thw[0]) for b in blocks] == [("video", 4), ("video", 4)]
        else:
            assert [b.kind for b in blocks] == ["image"]
        stream = [t for s in doc.segments for t in (s if isinstance(s, list) else [-1] * (s.n_tokens + 2))]
        trained = [t for t, flag in zip(stream, doc.train_flags or [], strict=True) if flag]
        assert tok.decode(trained[:-1]) == code  # the reply, then its <|im_end|>
        # read by the model: each block's placeholders of its kind, logits at every position
        tokens = []
        for seg in doc.segments:
            pad = ids.image if isinstance(seg, VisionBlock) and seg.kind == "image" else ids.video
            tokens += (
                seg if isinstance(seg, list) else [ids.media_start, *[pad] * seg.n_tokens, ids.media_end]
            )
        with torch.no_grad():
            logits = model(torch.tensor([tokens]), **vision_inputs(blocks)).logits
        assert logits is not None and logits.shape[:2] == (1, len(tokens)) and torch.isfinite(logits).all()

    # As a prompt (RL, evaluation): the clip becomes the same two runs of video placeholders.
    runner = RolloutRunner(tok, VISION, ToolConfig(), 16, 1, 4096, run_tool=lambda *a: None)
    recording = next(s for s in samples if b"html_recording" in s["json"])
    record = json.loads(recording["json"])
    record["messages"] = record["messages"][:-1]
    task = task_from_sample({**recording, "json": json.dumps(record).encode()}, "code")
    assert task.images["clip_0"].shape[0] == 8 and len(task.targets) == 8
    episode = runner.start(task)
    assert [b.kind for b in episode.blocks] == ["video", "video"]
    assert episode.tokens.count(tok.token_id("<|video_pad|>")) == sum(b.n_tokens for b in episode.blocks)
