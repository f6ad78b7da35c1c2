"""The ``kimi-lab`` subcommands besides train (which tests/test_train.py covers)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli


def test_data_build_text_and_tokenizer(tmp_path: Path) -> None:
    res = run_cli("data", "build", "text", "--out", "shards", "--n", "40", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert manifest["counts"]["documents"] + manifest["counts"]["duplicates"] <= 40
    assert manifest["counts"]["train"] + manifest["counts"]["val"] >= manifest["counts"]["documents"]
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
    assert "decode cache (MLA latent): 80 values per token and layer" in res.stdout  # 64 + 16


def test_params_json_gives_k2s_latent_cache_per_token() -> None:
    res = run_cli("params", "model=k2", "--json", cwd=REPO)
    assert res.returncode == 0, res.stderr
    cache = json.loads(res.stdout.strip().splitlines()[-1])["decode_cache"]
    assert cache["values_per_token_per_layer"] == 576 and cache["layers"] == 61


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


def test_data_build_video_and_inspect_json(tmp_path: Path) -> None:
    res = run_cli("data", "build", "video", "--out", "clips", "--n", "6", "--seed", "3", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    manifest = json.loads((tmp_path / "clips" / "manifest.json").read_text())
    assert manifest["seed"] == 3 and manifest["builder"].startswith("video/")
    res = run_cli("data", "inspect", "clips", "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["totals"]["samples"] == 6 and report["totals"]["modalities"] == {"video": 6}
    res = run_cli("data", "inspect", "clips", cwd=tmp_path)
    assert "decode failures: none" in res.stdout and "video 6" in res.stdout


def test_bench_data_reports_loader_headroom(tmp_path: Path, tiny_shards: Path, tiny_tokenizer: Path) -> None:
    res = run_cli(
        "bench",
        "data",
        "--json",
        "--batches",
        "5",
        "--train-steps",
        "6",
        "--set",
        "model=tiny",
        "--set",
        f"data.sources.text.path={tiny_shards}",
        "--set",
        f"data.tokenizer={tiny_tokenizer}",
        "--set",
        "data.seq_len=32",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["raw_tar"]["samples_per_s"] > 0 and out["loader"]["tokens_per_s"] > 0
    assert out["headroom"] == out["loader"]["tokens_per_s"] / out["training"]["tokens_per_s"]
    assert 0 <= out["training"]["wait_fraction"] <= 1


def test_data_kinds_table_matches_the_builders() -> None:
    import inspect

    from data_pipelines.kinds import KINDS, OPTIONS

    for name, kind in KINDS.items():
        params = inspect.signature(kind.load()).parameters
        assert {"n", "seed", "shard_bytes"} <= set(params), name
        assert set(kind.options) <= set(OPTIONS) & set(params), name


def test_experiments_table_names_runnable_modules() -> None:
    import importlib

    from kimi_lab.experiments import EXPERIMENTS

    for name in EXPERIMENTS:
        assert callable(importlib.import_module(f"kimi_lab.experiments.{name}").run), name


def test_data_build_flag_of_another_kind_is_one_line(tmp_path: Path) -> None:
    res = run_cli("data", "build", "text", "--families", "count", "--out", "x", cwd=tmp_path)
    assert res.returncode == 2 and not (tmp_path / "x").exists()
    assert res.stderr.strip() == "error: data build text: --families does not apply to this kind"


def test_every_bench_the_cli_names_is_a_benchmark_module() -> None:
    import importlib

    from kimi_lab.commands import BENCHES

    for name in BENCHES:
        assert callable(importlib.import_module(f"benchmarks.{name}").main), name


def test_every_command_is_an_entry_of_the_table_and_answers_help(capsys: pytest.CaptureFixture) -> None:
    from kimi_lab import cli, commands

    leaves = [
        ((name,), entry) if isinstance(entry, cli.Command) else ((name, child), command)
        for name, entry in cli.COMMANDS.items()
        for child, command in ([(None, entry)] if isinstance(entry, cli.Command) else entry.items())
    ]
    parser = cli.build_parser()
    for path, command in leaves:
        assert command.run is None or getattr(commands, command.run.__name__) is command.run, path
        assert f"kimi-lab {' '.join(path)}" in cli.__doc__, f"{path} is missing from the usage in cli.py"
        if command.add_help:
            with pytest.raises(SystemExit) as done:
                parser.parse_args([*path, "--help"])
            assert done.value.code == 0 and f"usage: kimi-lab {' '.join(path)}" in capsys.readouterr().out
