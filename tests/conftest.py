"""Shared fixtures: a tiny tokenizer and tiny text shards, built once per session."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

# Tracking stays local and quiet in tests; never reach for a server.
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ.setdefault("WANDB_DISABLE_GIT", "true")

REPO = Path(__file__).resolve().parents[1]
TINY_VOCAB = 512


@pytest.fixture(autouse=True)
def _restore_torch_determinism() -> Any:
    """An in-process run with ``trainer.deterministic=true`` turns torch's deterministic mode on for
    the whole process (Lightning never turns it off); later tests must not inherit it."""
    import torch

    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


def run_cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``kimi-lab ARGS`` as a user would, in a fresh process."""
    return subprocess.run(
        [sys.executable, "-m", "kimi_lab.cli", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from kimi_lab.data.tokenizer import train_tokenizer

    path = tmp_path_factory.mktemp("tok") / f"bpe-{TINY_VOCAB}.json"
    return train_tokenizer(TINY_VOCAB, path, max_bytes=1_500_000)


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from data_pipelines.text import build_text

    out = tmp_path_factory.mktemp("text")
    build_text(out, n=160, seed=0, val_fraction=0.1, shard_bytes=200_000, progress=False)
    return out


@pytest.fixture(scope="session")
def image_code_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from data_pipelines.image_code import build_image_code

    out = tmp_path_factory.mktemp("image_code")
    build_image_code(out, n=24, seed=0, val_fraction=0.2, shard_bytes=100_000, progress=False)
    return out


@pytest.fixture(scope="session")
def video_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from data_pipelines.video import build_video

    out = tmp_path_factory.mktemp("video")
    build_video(str(out), n=24, seed=0, val_fraction=0.2, shard_bytes=40_000, progress=False)
    return out


@pytest.fixture(scope="session")
def interleaved_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from data_pipelines.interleaved import build_interleaved

    out = tmp_path_factory.mktemp("interleaved")
    build_interleaved(str(out), n=24, seed=0, val_fraction=0.2, shard_bytes=60_000, progress=False)
    return out


@pytest.fixture(scope="session")
def page_recording_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One page recording of every scene (slide, transition, progress, tabs, counter, list)."""
    from data_pipelines.page_recordings import SCENES, build_page_recordings

    out = tmp_path_factory.mktemp("page_recordings")
    build_page_recordings(str(out), n=len(SCENES), seed=0, val_fraction=0.0, progress=False)
    return out


@pytest.fixture(scope="session")
def code_task_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Code-from-pixels SFT conversations, one of each family (html / svg screenshot, html recording)."""
    from data_pipelines.code_tasks import FAMILIES, build_code_tasks

    out = tmp_path_factory.mktemp("code_tasks")
    build_code_tasks(out, n=len(FAMILIES), seed=0, with_answers=True, val_fraction=0.0, progress=False)
    return out


@pytest.fixture(scope="session")
def sandbox() -> None:
    """The bubblewrap sandbox must work (the README's test command installs it): fail, never skip."""
    from kimi_lab.tools import sandbox_unavailable_reason

    reason = sandbox_unavailable_reason()
    if reason:
        pytest.fail(f"the code sandbox cannot run here: {reason}")


@pytest.fixture(scope="session")
def task_shards(sandbox: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Verified task prompts of every family, text and image (val: a fifth)."""
    from data_pipelines.visual_tasks import build_visual_tasks

    out = tmp_path_factory.mktemp("visual_tasks")
    build_visual_tasks(out, n=14, seed=0, modality="both", val_fraction=0.2, progress=False)
    return out


@pytest.fixture(scope="session")
def sft_shards(sandbox: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Zero-vision SFT trajectories, some of them visual."""
    from data_pipelines.zero_vision_sft import build_zero_vision_sft

    out = tmp_path_factory.mktemp("zero_vision_sft")
    build_zero_vision_sft(
        out, n=10, seed=0, with_visual_traces=True, visual_fraction=0.3, val_fraction=0.3, progress=False
    )
    return out


@pytest.fixture
def tiny_overrides(tiny_tokenizer: Path, tiny_shards: Path, tmp_path: Path) -> list[str]:
    """Overrides that make any experiment a seconds-long tiny run inside tmp_path."""
    return tiny_run_overrides(tiny_tokenizer, tiny_shards, tmp_path)


def tiny_run_overrides(tiny_tokenizer: Path, tiny_shards: Path, tmp_path: Path) -> list[str]:
    return [
        "model=tiny",
        f"data.sources.text.path={tiny_shards}",
        f"data.tokenizer={tiny_tokenizer}",
        "data.seq_len=32",
        "data.batch_size=4",
        "data.shuffle_buffer=16",
        "data.val_batches=2",
        f"runs_dir={tmp_path / 'runs'}",
        "logger=none",
        "trainer.progress_bar=false",
        "trainer.precision=32-true",
        "trainer.limit_val_batches=2",
    ]


# ------------------------------------------------------------ checkpoints to talk to
PARROT_SCRIPT = "python\n1/0"  # the tool call the parrot checkpoint always makes (it fails: visibly run)


def save_tiny_checkpoint(path: Path, tokenizer: Path, edit: Any = None, model_name: str = "tiny") -> Path:
    """An untrained ``model=tiny`` (or ``tiny-vl``) kimi_lab checkpoint: what the loader reads, config
    and weights, as a training run's checkpoint holds them."""
    import torch
    from omegaconf import OmegaConf

    from kimi_lab.config import compose, to_run_config
    from kimi_lab.model.multimodal import KimiK25

    cfg = to_run_config(
        compose([f"model={model_name}", "model.max_seq_len=2048", f"data.tokenizer={tokenizer}"])
    )
    torch.manual_seed(0)
    model = KimiK25(cfg.model)
    if edit is not None:
        edit(model)
    config = OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True)
    state = {"model." + k: v for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"hyper_parameters": {"config": config}, "state_dict": state}, path)
    return path


@pytest.fixture(scope="session")
def chat_ckpt(tiny_tokenizer: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny checkpoint: whatever it says, greedy decoding says it every time."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("chat") / "tiny.ckpt", tiny_tokenizer)


@pytest.fixture(scope="session")
def parrot_ckpt(tiny_tokenizer: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real KimiK25 whose greedy answer to any chat prompt is one python tool call.

    Every layer's matrices are zero, so the residual stream is the current token's embedding;
    the tokens of the script get orthogonal embeddings and the LM head maps each to the next
    one: after ``<|assistant|>`` the model writes ``<|tool_call_begin|>`` + PARROT_SCRIPT +
    ``<|tool_call_end|>`` then ``<|im_end|>``.
    """
    import torch

    from kimi_lab.chat_format import CALL_BEGIN, CALL_END, IM_END
    from kimi_lab.data.tokenizer import Tokenizer

    tok = Tokenizer(tiny_tokenizer)
    chain = [tok.token_id("<|assistant|>"), tok.token_id(CALL_BEGIN), *tok.encode(PARROT_SCRIPT)]
    chain += [tok.token_id(CALL_END), tok.token_id(IM_END)]
    assert len(set(chain)) == len(chain), "the script needs distinct tokens"

    @torch.no_grad()
    def edit(model: Any) -> None:
        lm = model.language_model
        for name, p in lm.named_parameters():
            if name.startswith("layers.") and p.ndim >= 2:
                p.zero_()
        lm.lm_head.weight.zero_()
        for k, (cur, nxt) in enumerate(itertools.pairwise(chain)):
            lm.embed.weight[cur].zero_()
            lm.embed.weight[cur, k] = 1.0
            lm.lm_head.weight[nxt, k] = 10.0

    return save_tiny_checkpoint(tmp_path_factory.mktemp("parrot") / "parrot.ckpt", tiny_tokenizer, edit)
