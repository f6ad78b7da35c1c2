"""The ``kimi-lab`` subcommands besides train (which tests/test_train.py covers)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import REPO, run_cli


def test_data_build_text_and_tokenizer(tmp_path: Path) -> None:
    res = run_cli("data", "build", "text", "--out", "shards", "--n", "40", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert manifest["counts"]["train"] + manifest["counts"]["val"] + manifest["counts"]["duplicates"] <= 40
    assert "text shards: shards" in res.stdout
    res = run_cli("data", "build", "tokenizer", "--vocab-size", "300", "--out", "tok.json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "tok.json").is_file() and "300 tokens" in res.stdout


def test_data_build_bad_source_is_one_line(tmp_path: Path) -> None:
    res = run_cli("data", "build", "text", "--src", "missing_folder", cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip() == "error: --src missing_folder: no such file or folder"


def test_params_table(tmp_path: Path) -> None:
    res = run_cli("params", "model=small", cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert "model small:" in res.stdout and "routed_experts" in res.stdout


def test_bench_moe_reports_ratios_against_peers(tmp_path: Path) -> None:
    res = run_cli(
        "bench",
        "moe",
        "--json",
        "--tokens",
        "64",
        "--hidden",
        "32",
        "--ffn",
        "16",
        "--experts",
        "8",
        "--top-k",
        "2",
        "--repeats",
        "1",
        "--warmup",
        "1",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["shape"]["experts"] == 8
    assert out["speedup_vs_transformers"] > 0 and out["time_vs_dense"] > 0
    assert out["transformers_best"].startswith("transformers_")
    assert isinstance(out["times_ms"]["kimi_lab_torch"], float)
