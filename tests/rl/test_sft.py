"""Phase sft: chat samples packed whole, loss on the assistant's tokens only, trains from a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kimi_lab.chat_format import ChatEncoder, Message, ToolCall
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


# ------------------------------------------------- fenced conversations (SFT packing)
def _packed_batch(tok: Tokenizer, chats: list[list[Message]], L: int) -> tuple[dict, list]:
    """Conversations packed into windows of ``L`` by the SFT packer, collated as training batches are."""
    from kimi_lab.data.stream import _fences

    ids = SpecialIds.from_tokenizer(tok)
    decode = Decoder(tok, VisionDataConfig())
    packer = Packer(L, ids)
    windows = []
    for i, chat in enumerate(chats):
        doc = decode(_sample(f"k{i}", chat))
        packer.check(doc)
        windows.extend(packer.add(doc, serial=i + 1))
    tokens = torch.stack([w.tokens for w in windows])
    batch = {"tokens": tokens, "loss_mask": loss_mask(tokens, ids, torch.stack([w.targets for w in windows]))}
    return {**batch, **_fences(windows)}, windows


def test_packed_conversations_are_fenced_and_start_at_position_zero(tiny_tokenizer: Path) -> None:
    tok = Tokenizer(tiny_tokenizer)
    batch, windows = _packed_batch(tok, [_chat(i) for i in range(6)], 96)
    im_start = tok.token_id("<|im_start|>")
    seg, pos, inputs = batch["segment_ids"], batch["positions"], batch["tokens"][:, :-1]
    assert seg.shape == pos.shape == inputs.shape
    for b in range(inputs.shape[0]):
        starts = (pos[b] == 0).nonzero().flatten().tolist()
        assert len(starts) >= 2  # several conversations share the window
        for s in starts[1:]:
            assert seg[b, s] != seg[b, s - 1]  # a new segment at each conversation (or padding run)
        # every conversation's first token (<|im_start|><|user|>) is at position 0 of its own segment
        convo_starts = [i for i in range(inputs.shape[1] - 1) if inputs[b, i] == im_start and
                        inputs[b, i + 1] == tok.token_id("<|user|>")]  # fmt: skip
        assert convo_starts and all(pos[b, i] == 0 for i in convo_starts)
    assert all(w.segments is not None for w in windows)
    # text alone is packed as in pre-training: no fences, plain causal attention
    from kimi_lab.data.decode import Document
    from kimi_lab.data.stream import _fences

    text = Packer(32, SpecialIds.from_tokenizer(tok))
    plain = [
        w
        for i in range(4)
        for w in text.add(Document(f"t{i}", "mem", "text", [tok.encode("x = 1\n" * 9)]), i)
    ]
    assert plain and all(w.segments is None for w in plain) and _fences(plain) == {}


def test_a_packed_batch_trains_as_its_conversations_one_by_one(tiny_tokenizer: Path) -> None:
    """No token attends across a conversation boundary, and the packed loss is the one-by-one loss."""
    import torch.nn.functional as F

    from kimi_lab.config import compose, to_run_config
    from kimi_lab.model.multimodal import KimiK25

    tok = Tokenizer(tiny_tokenizer)
    cfg = to_run_config(compose(["model=tiny", f"data.tokenizer={tiny_tokenizer}"]))
    torch.manual_seed(0)
    model = KimiK25(cfg.model).eval()
    chats = [_chat(i) for i in (3, 41, 592)]
    # a window that the three fill exactly (each conversation and its <|endoftext|>)
    length = sum(len(ChatEncoder(tok).encode(c).tokens) + 1 for c in chats)
    batch, _ = _packed_batch(tok, chats, length - 1)
    assert batch["tokens"].shape[0] == 1
    inputs, labels, mask = batch["tokens"][:, :-1], batch["tokens"][:, 1:], batch["loss_mask"]
    assert int(batch["segment_ids"].max()) >= 2  # the conversations share one window

    def packed_logits(x: torch.Tensor) -> torch.Tensor:
        return model(x, segment_ids=batch["segment_ids"], positions=batch["positions"]).logits

    with torch.no_grad():
        logits = packed_logits(inputs)
        packed = F.cross_entropy(logits[mask], labels[mask], reduction="sum")
        alone, n = torch.zeros(()), 0
        for chat in chats:
            enc = ChatEncoder(tok).encode(chat)
            t = torch.tensor(enc.tokens)[None]
            flags = torch.tensor(enc.train)[1:]
            out = model(t[:, :-1]).logits[0]
            alone += F.cross_entropy(out[flags], t[0, 1:][flags], reduction="sum")
            n += int(flags.sum())
        assert int(mask.sum()) == n
        torch.testing.assert_close(packed / n, alone / n, rtol=1e-5, atol=1e-5)
        # changing the first conversation's tokens changes nothing in the others' logits
        seg = batch["segment_ids"]
        first = seg == seg[0, 0]
        other = ~first & (seg == seg[0].max())
        edited = inputs.clone()
        edited[first & (inputs > 40)] = 7
        torch.testing.assert_close(packed_logits(edited)[other], logits[other])
        # without the fence the same edit leaks into the later conversation
        leaky = model(edited).logits[other]
        assert not torch.allclose(leaky, model(inputs).logits[other])
