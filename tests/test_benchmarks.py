"""The benchmarks' own code, at tiny sizes: they run, measure every contender, and report figures
that hold what they claim (a best contender is the fastest, a share of a bound stays under it, a
cost added to a side moves the ratio its way), rather than the same division done again here.

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
    assert out["max_over_min"] >= 1
    # total expert weights grow with the count while active FLOPs do not
    assert out["routed_expert_mb"]["32"] == pytest.approx(8 * out["routed_expert_mb"]["4"])
    assert set(out["forms"]) == set(times) and set(out["forms"].values()) <= {"batched", "grouped", "loop"}
    assert "flags" in out["cpu"] and out["max_over_min_with_recast"] > 0


def test_bench_moe_times_each_expert_form_next_to_autos_choice(tmp_path: Path) -> None:
    res = run_cli(
        "bench", "moe", "--json", "--tokens", "64", "--hidden", "32", "--ffn", "16", "--experts", "8",
        "--top-k", "2", "--repeats", "1", "--warmup", "1", "--peers", "dense,paths", "--precision", "bf16",
        cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    t = out["times_ms"]
    assert set(t) == {
        "kimi_lab_torch", "kimi_lab_torch (batched forced)", "kimi_lab_torch (ragged forced)",
        "dense_swiglu_same_active_flops",
    }  # fmt: skip
    assert out["kimi_lab_form"] in ("batched", "grouped", "loop") and "flags" in out["cpu"]
    # the bf16 copies' recast is charged to kimi_lab's side: it can only make the ratio worse
    assert out["bf16_copy_recast_ms"] > 0 and out["time_vs_dense_with_recast"] > out["time_vs_dense"] > 0


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
    theirs = {name: r for name, r in out["contenders"].items() if not name.startswith("kimi_lab")}
    # the peer is transformers at its best: its fastest experts implementation
    assert theirs[out["transformers_best"]]["tokens_per_s"] == max(r["tokens_per_s"] for r in theirs.values())
    assert out["speedup_vs_transformers"] > 0 and out["peak_rss_vs_transformers"] > 0
    assert 0 < out["kimi_lab_mfu"] < 1 and out["matmul_peak_gflops"] > 0
    assert ours["expert_forms"] and "flags" in out["cpu"]


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
    assert res["kimi_lab_torch_speedup_vs_transformers"] > 0


def test_bench_generate_checks_tokens_then_compares_with_transformers() -> None:
    res = run_cli(
        "bench", "generate", "--json", "--model", "tiny", "--batch", "3", "--prompt", "12", "--new", "8",
        "--rounds", "1", "--threads", "1", cwd=REPO,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["tokens_identical"] and "flags" in out["cpu"] and out["threads"] == 1
    assert out["expert_forms"]["decode"] and out["expert_forms"]["prompt"]
    ours = out["contenders"]["kimi_lab"]
    theirs = {name: r for name, r in out["contenders"].items() if name != "kimi_lab"}
    best = max(r["generate_tokens_per_s"] for r in theirs.values())
    assert (
        theirs[out["transformers_best"]]["generate_tokens_per_s"] == best
        and out["speedup_vs_transformers"] > 0
    )
    if ours["decode_tokens_per_s"] is None:  # the decode steps' time was lost in the noise
        assert out["kimi_lab_share_of_bound"] is None
    else:  # no decode runs faster than this machine's matmul rate allows: a bound above every run
        assert 0 < out["kimi_lab_share_of_bound"] <= 1
    assert out["prompt_tokens"] == [9, 12] and out["images"] == 0


def test_bench_generate_with_images_in_the_prompts() -> None:
    from benchmarks.generate import make_prompts
    from kimi_lab.config import compose, to_run_config

    cfg = to_run_config(compose(["model=tiny-vl"])).model
    prompts = make_prompts(cfg, 4, 48)
    assert all(len(p.blocks) == 1 for p in prompts)
    assert len({p.blocks[0].grid_thw for p in prompts}) > 1  # images of several sizes
    for p in prompts:
        assert p.tokens.count(cfg.vision.image_token_id) == p.blocks[0].n_tokens


def test_decode_flops_count_the_lm_head_and_not_the_embedding() -> None:
    from benchmarks.generate import decode_flops_per_token
    from kimi_lab.config import compose, to_run_config
    from kimi_lab.model.params import count_params

    cfg = to_run_config(compose(["model=tiny"])).model
    a = cfg.attention
    per_ctx = 2 * cfg.n_layers * a.n_heads * (a.qk_nope_head_dim + a.qk_rope_head_dim + a.v_head_dim)
    assert decode_flops_per_token(cfg, 10) - decode_flops_per_token(cfg, 0) == pytest.approx(10 * per_ctx)
    c = count_params(cfg)
    assert decode_flops_per_token(cfg, 0) == 2 * (c.active - cfg.vocab_size * cfg.hidden_size)


def test_bench_ep_times_both_layouts_in_two_processes(tmp_path: Path) -> None:
    res = run_cli(
        "bench", "ep", "--json", "--tokens", "64", "--hidden", "32", "--ffn", "16", "--experts", "4",
        "--top-k", "2", "--repeats", "1", cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    tps = out["tokens_per_s"]
    assert set(tps) == {"ep1", "ep2"} and all(t > 0 for t in tps.values())
    assert out["ep_over_dp_tokens_per_s"] > 0 and 0 < out["all_to_all_share"] < 1 and out["cpu"]


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
    assert out["speedup"] > 0 and 0 <= out["same_reward"] <= 3 and "load_average" in out


def test_bench_serve_measures_both_engines_and_the_target_ratio(chat_ckpt: Path) -> None:
    from benchmarks.serve import run

    out = run(str(chat_ckpt), clients=(1, 3), requests=1, max_tokens=4, target_clients=2, rounds=1)
    assert set(out["concurrency"]) == {"1", "3"} and out["same_answers"]
    for row in out["concurrency"].values():
        b, o = row["batched"], row["one_at_a_time"]
        assert min(b["tokens_per_s"], o["tokens_per_s"]) > 0
        assert row["speedup"] > 0
        assert b["tokens_per_s"] == pytest.approx(4 * b["requests_per_s"])  # ignore_eos: 4 tokens each
    assert out["concurrent_over_one"] > 0


@pytest.mark.slow
def test_bench_memory_measures_every_rank_against_its_share_and_the_plan() -> None:
    from benchmarks.memory import measure

    out = measure(2, 2, "tiny", batch=2, seq=32, steps=1, file_mb=8, checkpointing="none")
    assert len(out["ranks"]) == 2 and out["share_bytes"] == out["model_bytes"] // 2
    assert all(r["start"] > 0 and r["train"] > 0 for r in out["ranks"])
