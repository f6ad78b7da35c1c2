"""Phase rl and `kimi-lab eval` / `kimi-lab experiment zero_vision`, end to end at a tiny size."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from tests.conftest import REPO, run_cli


def _rl(task_shards: Path, tiny_tokenizer: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        "train",
        "phase=rl",
        "model=tiny-vl",
        "model.max_seq_len=2048",
        f"data.tokenizer={tiny_tokenizer}",
        "data.vision.max_patches=64",
        f"phase.rl.tasks.vision.path={task_shards}",
        "phase.rl.prompts_per_step=2",
        "phase.rl.samples_per_prompt=2",
        "phase.rl.max_new_tokens=24",
        "phase.rl.max_turns=2",
        "phase.rl.eval_prompts=2",
        "trainer.max_steps=2",
        "trainer.log_every_n_steps=1",
        "trainer.val_check_interval=2",
        "trainer.limit_val_batches=1",
        "trainer.checkpoint_every_n_steps=1",
        "trainer.precision=32-true",
        "trainer.progress_bar=false",
        "logger=none",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]


def test_rl_phase_rolls_out_scores_and_resumes(
    task_shards: Path, tiny_tokenizer: Path, tmp_path: Path
) -> None:
    run = tmp_path / "rl"
    res = run_cli(*_rl(task_shards, tiny_tokenizer, run), cwd=REPO, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    m = pd.read_parquet(run / "metrics.parquet")
    steps = m[m.key == "rl/reward"]
    assert len(steps) == 2 and steps.value.between(0, 1).all()
    for key in ("rl/response_tokens", "rl/kept_fraction", "rl/tool_calls", "val/vision/reward"):
        assert (m.key == key).any(), key
    tokens = m[m.key == "rl/response_tokens"].value
    assert (tokens > 0).all()  # every step sampled something
    assert (m[m.key == "rl/rollout_tokens_per_s"].value > 0).all()
    share = m[m.key == "rl/sampling_fraction"].value
    assert len(share) == 2 and share.between(0, 1, inclusive="right").all()
    ckpt = run / "checkpoints" / "last.ckpt"
    import torch

    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    dm = next(v for k, v in state.items() if k.endswith("TaskDataModule"))
    assert dm == {"prompts_consumed": 4}
    # resuming continues from the saved step with the same prompt position
    res = run_cli(*_rl(task_shards, tiny_tokenizer, run, "trainer.max_steps=3", "ckpt_path=auto"), cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    m = pd.read_parquet(run / "metrics.parquet")
    assert sorted(m[m.key == "rl/reward"].step.tolist()) == [0, 1, 2]


def test_rl_config_errors_are_one_line(tiny_tokenizer: Path, tmp_path: Path) -> None:
    res = run_cli(
        *_rl(tmp_path / "missing", tiny_tokenizer, tmp_path / "r", "phase.rl.samples_per_prompt=1"), cwd=REPO
    )
    assert res.returncode == 2 and "samples_per_prompt=1 must be >= 2" in res.stderr
    res = run_cli(*_rl(tmp_path / "missing", tiny_tokenizer, tmp_path / "r"), cwd=REPO)
    assert res.returncode == 2 and "no such file or folder" in res.stderr


def test_eval_scores_a_checkpoint(task_shards: Path, tiny_tokenizer: Path, tmp_path: Path) -> None:
    run = tmp_path / "rl"
    assert run_cli(*_rl(task_shards, tiny_tokenizer, run, "trainer.max_steps=1"), cwd=REPO).returncode == 0
    out = tmp_path / "eval.json"
    res = run_cli(
        "eval", str(run / "checkpoints" / "last.ckpt"), "--tasks", f"vision={task_shards}", "--n", "3",
        "--out", str(out), cwd=REPO,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["summary"]["source/vision"]["n"] == 3
    assert "reward" in res.stdout and result["examples"][0]["transcript"][0]["role"] == "user"
    bad = run_cli("eval", str(run / "checkpoints" / "last.ckpt"), "--tasks", "nofolder", cwd=REPO)
    assert bad.returncode == 2 and "NAME=FOLDER" in bad.stderr
