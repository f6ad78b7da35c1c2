"""``kimi-lab evaluate`` through lm-evaluation-harness, against lm-eval's own ``hf`` model on the
export of the same checkpoint: local tasks (tests/harness_tasks), offline, fp32."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, run_cli

pytest.importorskip("lm_eval")
pytest.importorskip("transformers")

TASKS_DIR = REPO / "tests" / "harness_tasks"
TASKS = ["kimi_lab_tiny_mc", "kimi_lab_tiny_gen", "kimi_lab_tiny_ppl"]


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Nothing downloads: the datasets cache is private and the hub unreachable by rule."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.chdir(TASKS_DIR)  # the task YAMLs name their data files relative to where lm-eval runs


def _hf_samples(export: Path) -> tuple[dict[str, Any], dict[str, list[dict]]]:
    """lm-eval's ``hf`` model on the exported folder (transformers' DeepseekV3, fp32), in process."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    results = simple_evaluate(
        model="hf",
        model_args={"pretrained": str(export), "dtype": "float32"},
        tasks=TASKS,
        batch_size=4,
        device="cpu",
        log_samples=True,
        task_manager=TaskManager(include_path=str(TASKS_DIR), include_defaults=False),
    )
    assert results is not None
    return results["results"], results["samples"]


def _ours(folder: Path) -> tuple[dict[str, Any], dict[str, list[dict]]]:
    (run,) = folder.iterdir()  # <output>/<checkpoint name, sanitised>/
    results = json.loads(next(run.glob("results_*.json")).read_text())
    samples = {
        task: [
            json.loads(line) for line in next(run.glob(f"samples_{task}_*.jsonl")).read_text().splitlines()
        ]
        for task in TASKS
    }
    return results["results"], samples


def test_evaluate_agrees_with_lm_evals_hf_model_on_the_export(
    chat_ckpt: Path, tmp_path: Path, offline: None
) -> None:
    from kimi_lab.hf.exporter import export_hf

    res = run_cli(
        "evaluate",
        str(chat_ckpt),
        "--tasks",
        ",".join(TASKS),
        "--include-path",
        str(TASKS_DIR),
        "--output-path",
        str(tmp_path / "ours"),
        "--log-samples",
        "--batch-size",
        "3",
        cwd=TASKS_DIR,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == TASKS  # one line per task on the terminal
    assert "acc " in lines[0] and "(n=8)" in lines[0]
    ours, our_samples = _ours(tmp_path / "ours")

    theirs, their_samples = _hf_samples(export_hf(chat_ckpt, tmp_path / "hf"))
    assert ours["kimi_lab_tiny_mc"]["acc,none"] == theirs["kimi_lab_tiny_mc"]["acc,none"]
    assert ours["kimi_lab_tiny_mc"]["acc_norm,none"] == theirs["kimi_lab_tiny_mc"]["acc_norm,none"]
    for task in TASKS:
        mine = sorted(our_samples[task], key=lambda s: s["doc_id"])
        ref = sorted(their_samples[task], key=lambda s: s["doc_id"])
        assert [s["doc_id"] for s in mine] == [s["doc_id"] for s in ref]
        for a, b in zip(mine, ref, strict=True):
            if task == "kimi_lab_tiny_gen":  # greedy text, cut at the same stop strings
                assert a["resps"] == b["resps"], a["doc"]
                continue
            for ra, rb in zip(a["resps"], b["resps"], strict=True):  # one per choice (or the document)
                got, want = (ra[0][0], rb[0][0]) if task == "kimi_lab_tiny_mc" else (ra[0], rb[0])
                assert abs(float(got) - float(want)) < 1e-4, (task, a["doc_id"])
                if task == "kimi_lab_tiny_mc":
                    assert str(ra[0][1]) == str(rb[0][1])  # is_greedy


def test_bad_arguments_are_one_line_errors_before_lm_eval_runs(chat_ckpt: Path, tmp_path: Path) -> None:
    from kimi_lab.errors import ConfigError
    from kimi_lab.serving.harness import evaluate

    with pytest.raises(ConfigError, match="--include-path nowhere: no such folder"):
        evaluate(chat_ckpt, [TASKS[0]], include_path="nowhere")
    with pytest.raises(ConfigError, match="no such checkpoint"):
        evaluate(tmp_path / "missing.ckpt", [TASKS[0]])


def test_default_output_is_the_runs_lm_eval_folder(tmp_path: Path) -> None:
    from kimi_lab.serving.harness import default_output

    run = tmp_path / "runs" / "x" / "2026-01-01"
    assert default_output(run / "checkpoints" / "last.ckpt") == (run / "lm_eval").resolve()
    assert default_output(run / "checkpoints" / "sharded" / "step-10") == (run / "lm_eval").resolve()
    assert default_output(tmp_path / "model.ckpt") == (tmp_path / "lm_eval").resolve()


def test_generate_until_stops_once_every_row_ended_on_a_stop_token_or_string(
    chat_ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Row 0 ends on its stop token (``<|im_end|>``), row 1 writes the stop string and goes on:
    decoding stops at row 1's stop string, not at the token budget; nothing banned is sampled."""
    from kimi_lab.chat_format import ChatEncoder
    from kimi_lab.decode import generation
    from kimi_lab.serving.harness import Scorer

    scorer = Scorer(chat_ckpt, batch_size=2, progress=False)
    enc = ChatEncoder(scorer.tok)
    word, stop = scorer.tok.encode("ab"), scorer.tok.encode("##")
    rows = [[*word, enc.stop_ids[0]], word + stop + word * 20]
    seen: dict[str, Any] = {"steps": 0}

    def scripted(model: Any, prompts: list, options: Any, on_token: Any) -> list:
        seen["options"] = options
        for n in range(options.max_new_tokens):
            seen["steps"] = n + 1
            step = [r[n] if n < len(r) else None for r in rows]
            if on_token(generation.Step(step, [0.0 if t is not None else None for t in step])):
                break
        return [generation.Generation(r[: seen["steps"]], [], False) for r in rows]

    monkeypatch.setattr(generation, "generate", scripted)
    texts = scorer.generate_until([[1, 2], [3]], ["##"], max_new_tokens=40)
    assert seen["steps"] == len(word) + len(stop)  # the old code ran all 40 steps
    assert texts == ["ab", "ab"]
    assert seen["options"].banned_ids == enc.banned_ids
