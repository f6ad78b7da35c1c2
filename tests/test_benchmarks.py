"""The benchmarks' own code, at tiny sizes: they run, measure every contender and compute ratios.

(Their speed targets are printed by ``kimi-lab bench``; no test times anything.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli


def test_bench_sparsity_times_each_expert_count(tmp_path: Path) -> None:
    res = run_cli(
        "bench", "sparsity", "--json", "--experts", "4,8,32", "--tokens", "64", "--hidden", "32",
        "--ffn", "16", "--top-k", "2", "--repeats", "1", cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    times = out["times_ms"]
    assert set(times) == {"4", "8", "32"} and all(t > 0 for t in times.values())
    assert out["max_over_min"] == pytest.approx(max(times.values()) / min(times.values()))
    # total expert weights grow with the count while active FLOPs do not
    assert out["routed_expert_mb"]["32"] == pytest.approx(8 * out["routed_expert_mb"]["4"])


def test_bench_sparsity_rejects_fewer_experts_than_top_k(tmp_path: Path) -> None:
    res = run_cli("bench", "sparsity", "--experts", "1,8", "--top-k", "2", "--tokens", "16", cwd=tmp_path)
    assert res.returncode != 0 and "fewer than top-2" in res.stderr


def test_bench_step_compares_with_transformers_in_separate_processes() -> None:
    res = run_cli(
        "bench", "step", "--json", "--model", "tiny", "--batch", "2", "--seq-len", "16", "--steps", "1",
        "--rounds", "1", cwd=REPO,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert all("error" not in r for r in out["contenders"].values()), out["contenders"]
    ours = next(r for name, r in out["contenders"].items() if name.startswith("kimi_lab"))
    hf = out["contenders"][out["transformers_best"]]
    assert out["speedup_vs_transformers"] == pytest.approx(ours["tokens_per_s"] / hf["tokens_per_s"])
    assert out["peak_rss_vs_transformers"] == pytest.approx(ours["peak_rss_mb"] / hf["peak_rss_mb"])
    assert 0 < out["kimi_lab_mfu"] < 1 and out["matmul_peak_gflops"] > 0


def test_gpu_bench_code_runs_on_cpu_and_reports_a_missing_backend() -> None:
    """benchmarks/gpu.py is normally run on a GPU; its logic is checked here at a tiny size."""
    from benchmarks.gpu import run
    from benchmarks.moe import Shape

    res = run(
        Shape(tokens=64, hidden=32, ffn=16, experts=8, top_k=2, shared=1), repeats=1, warmup=1, device="cpu"
    )
    c = res["contenders"]
    assert "error" in c["kimi_lab_megablocks"] and "CUDA" in c["kimi_lab_megablocks"]["error"]
    for name in ("kimi_lab_torch", "transformers_grouped_mm"):
        assert c[name]["ms"] > 0 and c[name]["tflops"] > 0 and c[name]["mfu"] > 0
    assert res["kimi_lab_torch_speedup_vs_transformers"] == pytest.approx(
        c["transformers_grouped_mm"]["ms"] / c["kimi_lab_torch"]["ms"]
    )


def test_bench_eval_plays_the_same_prompts_both_ways(
    task_shards: Path, tiny_tokenizer: Path, tmp_path: Path
) -> None:
    res = run_cli(
        "bench", "eval", "--json", "--tasks", str(task_shards), "--n", "3", "--batch", "3", "--old-batch", "2",
        "--max-new-tokens", "4", "--model", "tiny-vl", "--tokenizer", str(tiny_tokenizer), cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["prompts"] == 3 and out["per_batch_s"] > 0 and out["batched_s"] > 0
    assert out["speedup"] == pytest.approx(out["per_batch_s"] / out["batched_s"])
    assert 0 <= out["same_reward"] <= 3 and "load_average" in out
