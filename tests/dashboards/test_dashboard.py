"""The Streamlit dashboard: every page against a real run, and against empty, partial and corrupt ones."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from dashboards.runs import RunInfo, default_run, short_labels
from kimi_lab import metrics as M
from tests.conftest import REPO, run_cli

PAGES = ["runs", "experts", "routing", "attention", "swarm", "data"]
ARTIFACTS = REPO / "test-artifacts" / "dashboard"


def _trace(path: Path) -> None:
    """A small valid swarm trace: two stages, three sub-agents."""
    events = [
        (0.0, 0, "orchestrator", "message", None, {}),
        (0.1, 1, "orchestrator", "spawn", None, {"name": "a"}),
        (0.1, 1, "orchestrator", "spawn", None, {"name": "b"}),
        (0.2, 1, "a", "assign", "orchestrator", {"stage": 0}),
        (0.2, 1, "b", "assign", "orchestrator", {"stage": 0}),
        (0.9, 3, "a", "finish", "orchestrator", {"stage": 0, "steps": 2}),
        (1.4, 4, "b", "finish", "orchestrator", {"stage": 0, "steps": 3}),
        (1.5, 5, "c", "assign", "orchestrator", {"stage": 1}),
        (2.0, 6, "c", "finish", "orchestrator", {"stage": 1, "steps": 1}),
        (2.1, 7, "orchestrator", "finish", None, {"reward": {"perf": 0.8, "parallel": 0.1, "finish": 0.05}}),
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "\n".join(
            json.dumps({"v": 1, "t": t, "step": s, "agent": a, "kind": k, "parent": p, "detail": d})
            for t, s, a, k, p, d in events
        )
    )


@pytest.fixture(scope="session")
def dash_root(tmp_path_factory, tiny_tokenizer, tiny_shards) -> Path:
    """A runs folder made by real tiny training runs: one single run and a 2-job sweep."""
    work = tmp_path_factory.mktemp("dash")
    common = [
        "model=tiny",
        f"data.sources.text.path={tiny_shards}",
        f"data.tokenizer={tiny_tokenizer}",
        "data.seq_len=32",
        "data.batch_size=4",
        "data.val_batches=2",
        f"runs_dir={work / 'runs'}",
        "logger=none",
        "trainer.progress_bar=false",
        "trainer.precision=32-true",
        "trainer.max_steps=12",
        "trainer.log_every_n_steps=2",
        "trainer.val_check_interval=6",
        "trainer.checkpoint_every_n_steps=6",
        "trainer.limit_val_batches=2",
        "phase.schedule.warmup_steps=2",
    ]
    res = run_cli(
        "train",
        *common,
        "experiment=quickstart",
        "phase.optim.name=muonclip",
        "phase.optim.qk_clip_tau=0.05",
        cwd=work,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    res = run_cli(
        "train", "--multirun", *common, "experiment=quickstart", "model.moe.n_routed_experts=4,8", cwd=work
    )
    assert res.returncode == 0, res.stderr[-2000:]
    single = next(p for p in (work / "runs" / "quickstart").iterdir() if p.name != "multirun")
    _trace(single / M.SWARM_DIR / "episode-0000.jsonl")
    _harness_results(single / M.HARNESS_DIR / "runs__last.ckpt" / "results_2026-01-01T00-00-00.json")
    return work / "runs"


def _harness_results(path: Path) -> None:
    """What ``kimi-lab evaluate`` writes (lm-eval's results JSON, the fields the page reads)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    results = {
        "kimi_lab_tiny_mc": {"alias": "kimi_lab_tiny_mc", "acc,none": 0.375, "acc_stderr,none": 0.18},
        "kimi_lab_tiny_ppl": {"alias": "kimi_lab_tiny_ppl", "word_perplexity,none": 40.5},
    }
    data = {
        "results": results,
        "n-samples": {"kimi_lab_tiny_mc": {"original": 8, "effective": 8}},
        "config": {"model": "kimi_lab", "model_args": {"pretrained": "runs/x/checkpoints/last.ckpt"}},
    }
    path.write_text(json.dumps(data))


@pytest.fixture(scope="session")
def odd_roots(tmp_path_factory, dash_root) -> dict[str, Path]:
    """Empty, partial (config only) and corrupt (garbage files) runs folders."""
    base = tmp_path_factory.mktemp("odd")
    empty = base / "empty"
    empty.mkdir()
    partial = base / "partial" / "quickstart" / "2026-01-01_00-00-00"
    (partial / ".hydra").mkdir(parents=True)
    (partial / M.CONFIG_FILE).write_text("experiment: quickstart\nmodel:\n  name: tiny\n")
    corrupt_root = base / "corrupt"
    single = next(p for p in (dash_root / "quickstart").iterdir() if p.name != "multirun")
    corrupt = corrupt_root / "quickstart" / single.name
    shutil.copytree(single, corrupt)
    for name in (M.METRICS_FILE, M.MOE_LOAD_FILE, M.ATTN_LOGITS_FILE):
        (corrupt / name).write_bytes(b"PAR1 this is not parquet")
    (corrupt / M.STATUS_FILE).write_text("{not json")
    (corrupt / M.SWARM_DIR / "episode-0000.jsonl").write_text('garbage\n{"v": 99}\n')
    for results in (corrupt / M.HARNESS_DIR).rglob("results_*.json"):
        results.write_text("{not json")
    return {"empty": base / "empty", "partial": base / "partial", "corrupt": corrupt_root}


def page(name: str, root: Path, monkeypatch: pytest.MonkeyPatch, data_dir: Path | None = None) -> AppTest:
    monkeypatch.setenv("KIMI_LAB_RUNS_DIR", str(root))
    if data_dir is not None:
        monkeypatch.setenv("KIMI_LAB_DATA_DIR", str(data_dir))
    at = AppTest.from_file(str(REPO / "dashboards" / "views" / f"{name}.py"), default_timeout=120)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def charts(at: AppTest) -> int:
    return len(at.get("vega_lite_chart")) + len(at.get("arrow_vega_lite_chart"))


def test_runs_page_shows_runs_curves_and_the_sweep(dash_root, monkeypatch) -> None:
    at = page("runs", dash_root, monkeypatch)
    table = at.dataframe[0].value
    assert len(table) == 3 and set(table["status"]) == {"finished"}
    single = table[~table["run"].str.contains("multirun")].iloc[0]
    assert (single["model"], single["optimizer"]) == ("tiny", "muonclip")  # each column says what it holds
    assert charts(at) >= 3  # train loss, val loss, metric vs swept parameter
    assert any("n_routed_experts" in s.value for s in at.selectbox if isinstance(s.value, str))
    evals = next(d.value for d in at.dataframe if "task" in d.value.columns)  # kimi-lab evaluate's results
    row = evals[evals["metric"] == "acc"].iloc[0]
    assert (row["task"], row["value"], row["checkpoint"], row["n"]) == (
        "kimi_lab_tiny_mc",
        0.375,
        "last.ckpt",
        8,
    )


def _run(name: str, experiment: str, step: int | None, mtime: float, tmp: Path) -> RunInfo:
    path = tmp / name
    path.mkdir(parents=True)
    os.utime(path, (mtime, mtime))
    return RunInfo(path=path, name=name, experiment=experiment, status="finished", step=step, sweep=None)


def test_default_run_is_the_longest_of_the_newest_experiment_not_a_smoke_run(tmp_path: Path) -> None:
    real = _run("quickstart/2026-12-05_10-00-00", "quickstart", 300, 100, tmp_path)
    smoke = _run("quickstart/2026-12-05_11-00-00", "quickstart", 2, 200, tmp_path)
    older = _run("qk_clip/2026-12-01_10-00-00", "qk_clip", 5000, 50, tmp_path)
    assert default_run([smoke, real, older]) is real
    again = _run("quickstart/2026-12-05_12-00-00", "quickstart", 300, 300, tmp_path)
    assert default_run([again, smoke, real, older]) is again  # as long: the newest
    assert default_run([]) is None


def test_legend_labels_are_the_shortest_that_tell_runs_apart() -> None:
    assert short_labels(["quickstart/2026-12-05_12-14-34", "quickstart/2026-12-05_12-15-41"]) == {
        "quickstart/2026-12-05_12-14-34": "12-14-34",
        "quickstart/2026-12-05_12-15-41": "12-15-41",
    }
    jobs = ["quickstart/multirun/2026-12-05_12-20-00/0", "quickstart/multirun/2026-12-05_12-20-00/1"]
    assert list(short_labels(jobs).values()) == ["12-20-00/0", "12-20-00/1"]  # a job number keeps its sweep
    mixed = ["quickstart/2026-12-05_12-14-34", "qk_clip/2026-12-05_12-14-34"]
    assert short_labels(mixed) == {n: n for n in mixed}
    assert short_labels(["quickstart/2026-12-05_12-14-34"]) == {
        "quickstart/2026-12-05_12-14-34": "quickstart/2026-12-05_12-14-34"
    }


def test_experts_page(dash_root, monkeypatch) -> None:
    at = page("experts", dash_root, monkeypatch)
    assert charts(at) == 4  # share heatmap, imbalance, share over steps, biases
    assert at.selectbox[1].options == ["1 (MoE)"]  # the model's layer 1: tiny's only MoE layer


def test_attention_page_shows_clips(dash_root, monkeypatch) -> None:
    at = page("attention", dash_root, monkeypatch)
    assert charts(at) >= 3  # per-layer, per-head, clip events
    assert len(at.dataframe) == 1  # the table of clipped heads
    heads = next(s for s in at.selectbox if s.label == "layer of the heads")  # per-head lines, one layer's
    assert heads.options == ["0 (dense)", "1 (MoE)"]  # numbered as on the Experts page


def test_swarm_page_timeline_and_reward(dash_root, monkeypatch) -> None:
    at = page("swarm", dash_root, monkeypatch)
    assert charts(at) == 2  # Gantt + reward components
    assert "critical steps used: 7" in [c.value for c in at.caption]


def test_routing_inspector_routes_text(dash_root, monkeypatch) -> None:
    at = page("routing", dash_root, monkeypatch)
    at.button[0].click().run()
    assert not at.exception
    assert len(at.dataframe) == 1 and charts(at) == 1
    table = at.dataframe[0].value
    assert "token" in table.columns and len(table) > 5


def test_data_page_shows_samples(dash_root, monkeypatch, tiny_shards, image_code_shards) -> None:
    at = page("data", dash_root, monkeypatch, data_dir=image_code_shards.parent)
    assert at.selectbox[0].options  # shard folders found
    folder = next(o for o in at.selectbox[0].options if "image_code" in o)
    at.selectbox[0].select(folder).run()
    assert not at.exception and len(at.get("image")) >= 1 and len(at.code) >= 1


def test_data_page_plays_a_recording_beside_its_code(monkeypatch, page_recording_shards) -> None:
    at = page("data", page_recording_shards.parent, monkeypatch, data_dir=page_recording_shards.parent)
    at.selectbox[0].select_index(at.selectbox[0].options.index(page_recording_shards.name)).run()
    assert not at.exception and len(at.get("video")) >= 1 and len(at.code) >= 1
    assert any("<html>" in c.value for c in at.code) and len(at.dataframe) >= 1  # code and timeline


def test_routing_inspector_routes_a_recording(tmp_path: Path, tiny_tokenizer, page_recording_shards) -> None:
    from dashboards.routing import route
    from kimi_lab.data.shards import iter_shard_samples
    from tests.conftest import save_tiny_checkpoint

    ckpt = save_tiny_checkpoint(tmp_path / "vl.ckpt", tiny_tokenizer, model_name="tiny-vl")
    shards = iter(sorted(str(p) for p in page_recording_shards.glob("*.tar")))
    sample = next(iter_shard_samples(shards, None))
    table, problem = route(ckpt, "<html>", sample["mp4"], "mp4")
    assert problem is None and table is not None
    tokens = set(table["token"])
    assert {"<chunk 0 0>", "<chunk 1 0>"} <= tokens  # 8 frames: two chunks, each its own run
    assert table["position"].max() + 1 == len(table[table["moe_layer"] == 0]) // table["rank"].nunique()
    _, problem = route(ckpt, "x", b"not a video", "mp4")
    assert problem is not None and problem.startswith("could not read the recording")


@pytest.mark.parametrize("kind", ["empty", "partial", "corrupt"])
@pytest.mark.parametrize("name", PAGES)
def test_pages_survive_odd_run_folders(name, kind, odd_roots, monkeypatch, tmp_path) -> None:
    at = page(name, odd_roots[kind], monkeypatch, data_dir=tmp_path)
    messages = [m.value for m in [*at.info, *at.warning, *at.caption]]
    assert messages, "a page with nothing to show says so"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_busy_port_is_refused_before_streamlit_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = run_cli("dashboard", str(tmp_path), "--port", str(port), cwd=tmp_path, timeout=120)
    assert res.returncode == 2 and res.stdout == ""  # no URL printed as if it had started
    assert res.stderr == f"error: port {port} on 127.0.0.1 is already in use: choose another with --port N\n"


def test_pages_render_in_a_real_browser(dash_root, tiny_shards) -> None:
    from playwright.sync_api import sync_playwright

    from kimi_lab.tools.renderers import CHROMIUM_ARGS, find_chromium

    port = _free_port()
    env = {**os.environ, "KIMI_LAB_DATA_DIR": str(tiny_shards.parent)}
    server = subprocess.Popen(
        [sys.executable, "-m", "kimi_lab.cli", "dashboard", str(dash_root), "--port", str(port)],
        cwd=dash_root.parent,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.time() < deadline and server.poll() is None, "the dashboard did not start"
            time.sleep(0.5)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=find_chromium(), headless=True, args=CHROMIUM_ARGS)
            pg = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors: list[str] = []  # the browser console's errors: a 404, a script error, a bad spec
            pg.on(
                "console",
                lambda m: m.type == "error" and errors.append(f"{m.text} ({m.location.get('url')})"),
            )
            pg.on("pageerror", lambda e: errors.append(str(e)))
            for name in PAGES:
                pg.goto(
                    f"http://127.0.0.1:{port}/?page={name}"
                )  # the address a page has (a reload lands here)
                pg.wait_for_selector("[data-testid='stMain'] h1", timeout=60_000)
                if name in ("runs", "experts", "attention", "swarm"):
                    pg.wait_for_selector(
                        "[data-testid='stVegaLiteChart'] canvas, [data-testid='stVegaLiteChart'] svg",
                        timeout=60_000,
                    )
                else:
                    pg.wait_for_timeout(1500)
                pg.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
                assert pg.locator("[data-testid='stException']").count() == 0, f"{name} shows an exception"
                assert not errors, f"{name}: console errors {errors}"
            browser.close()
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
    assert all((ARTIFACTS / f"{name}.png").stat().st_size > 10_000 for name in PAGES)


def test_swarm_page_draws_a_real_swarm_run(tmp_path: Path, monkeypatch) -> None:
    tasks = tmp_path / "tasks"
    assert (
        run_cli("data", "build", "swarm-tasks", "--out", str(tasks), "--n", "6", cwd=tmp_path).returncode == 0
    )
    out = tmp_path / "runs" / "swarm" / "fanout"
    res = run_cli(
        "swarm", "run", "--tasks", str(tasks), "--policy", "fanout", "--out", str(out), cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr[-2000:]
    at = page("swarm", tmp_path / "runs", monkeypatch)
    assert charts(at) == 2  # the Gantt of the real episode and its reward
    caption = next(c.value for c in at.caption if c.value.startswith("critical steps used"))
    used = json.loads((out / "episodes.jsonl").read_text().splitlines()[0])["critical_steps"]
    assert caption == f"critical steps used: {used}"
