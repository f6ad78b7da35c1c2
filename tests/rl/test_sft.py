"""Phase sft: chat samples packed whole, loss on the assistant's tokens only, trains from a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kimi_lab.chat import ChatEncoder, Message, ToolCall
from kimi_lab.config.schema import VisionDataConfig
from kimi_lab.data.decode import Decoder, SampleSkip
from kimi_lab.data.packing import Packer, SpecialIds, loss_mask
from kimi_lab.data.schema import make_record
from kimi_lab.data.tokenizer import Tokenizer
from tests.conftest import REPO, run_cli


def _sample(key: str, messages: list[Message]) -> dict:
    record = make_record("chat", "test")
    record["messages"] = [m.to_dict() for m in messages]
    return {"__key__": key, "__url__": "mem", "json": json.dumps(record).encode()}


def _chat(n: int) -> list[Message]:
    return [
        Message("user", f"question {n}"),
        Message("assistant", "", [ToolCall("python", f"print({n})")]),
        Message("tool", f"{n}"),
        Message("assistant", f"Answer: {n}"),
    ]


def test_chat_windows_train_only_on_assistant_tokens_and_never_split(tiny_tokenizer: Path) -> None:
    tok = Tokenizer(tiny_tokenizer)
    ids = SpecialIds.from_tokenizer(tok)
    decode = Decoder(tok, VisionDataConfig())
    doc_len = len(ChatEncoder(tok).encode(_chat(1)).tokens) + 1
    L = doc_len * 2 + doc_len // 2  # two conversations and a half fit: the third must move on
    packer = Packer(L, ids)
    windows = []
    for i in range(5):
        doc = decode(_sample(f"k{i}", _chat(i)))
        packer.check(doc)
        windows.extend(packer.add(doc, serial=i + 1))
    assert len(windows) >= 2
    for w in windows:
        mask = loss_mask(w.tokens[None], ids, w.targets[None])[0]
        trained = tok.decode(w.tokens[1:][mask].tolist())
        # every target is assistant text: tool calls, answers and their <|im_end|>
        assert "question" not in trained and "<|tool_result_begin|>" not in trained
        assert trained.count("<|im_end|>") == 2 * trained.count("Answer:")
        # a window holds whole conversations: each one that starts in it also ends in it
        text = tok.decode(w.tokens.tolist())
        assert text.count("<|im_start|><|user|>") == text.count("Answer:")


def test_prompt_only_and_too_long_chats_are_skipped(tiny_tokenizer: Path) -> None:
    tok = Tokenizer(tiny_tokenizer)
    decode = Decoder(tok, VisionDataConfig())
    with pytest.raises(SampleSkip, match="without an assistant"):
        decode(_sample("p", _chat(1)[:1]))
    doc = decode(_sample("long", _chat(123456789) * 20))
    with pytest.raises(SampleSkip) as err:
        Packer(64, SpecialIds.from_tokenizer(tok)).check(doc)
    assert err.value.reason == "too_long"


def test_sft_phase_trains_on_zero_vision_trajectories(
    sft_shards: Path, tiny_tokenizer: Path, tmp_path: Path
) -> None:
    common = [
        "model=tiny-vl",
        f"data.tokenizer={tiny_tokenizer}",
        "model.max_seq_len=2048",
        "logger=none",
        "trainer.progress_bar=false",
        "trainer.precision=32-true",
        f"runs_dir={tmp_path / 'runs'}",
        "data.vision.max_patches=64",
    ]
    res = run_cli(
        "train",
        "phase=sft",
        "data=zero_vision_sft",
        f"data.sources.sft.path={sft_shards}",
        "data.seq_len=2048",
        "data.batch_size=2",
        "trainer.max_steps=3",
        "trainer.log_every_n_steps=1",
        "trainer.val_check_interval=3",
        "trainer.limit_val_batches=1",
        "phase.schedule.warmup_steps=1",
        f"hydra.run.dir={tmp_path / 'sft'}",
        *common,
        cwd=REPO,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    import pandas as pd

    m = pd.read_parquet(tmp_path / "sft" / "metrics.parquet")
    losses = m[m.key == "train/loss"].value
    assert len(losses) == 3 and losses.notna().all()
    assert (m.key == "val/sft/loss").any()
    assert (tmp_path / "sft" / "checkpoints" / "last.ckpt").is_file()
    # a data source without chat samples is refused with one line
    bad = run_cli("train", "phase=sft", "data=text", f"hydra.run.dir={tmp_path / 'bad'}", *common, cwd=REPO)
    assert bad.returncode != 0


def test_sft_targets_match_the_encoder(tiny_tokenizer: Path) -> None:
    tok = Tokenizer(tiny_tokenizer)
    decode = Decoder(tok, VisionDataConfig())
    doc = decode(_sample("k", _chat(7)))
    enc = ChatEncoder(tok).encode(_chat(7))
    assert doc.train_flags == enc.train
    assert torch.tensor(enc.train).any()
