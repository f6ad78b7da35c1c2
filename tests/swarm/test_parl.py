"""Phase parl, the PARL reward, the checkpoint / served policies and `kimi-lab swarm run`, end to end."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from kimi_lab.chat_format import Message, ToolCall
from kimi_lab.openai_format import call_from_openai, from_openai, to_openai
from kimi_lab.swarm.result import EpisodeResult
from kimi_lab.swarm.reward import ParlWeights, annealed, parl_reward
from kimi_lab.swarm.types import SwarmTask
from tests.conftest import REPO, run_cli


@pytest.fixture(scope="module")
def swarm_tasks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("swarm-tasks")
    res = run_cli("data", "build", "swarm-tasks", "--out", str(out), "--n", "12", "--seed", "3", cwd=REPO)
    assert res.returncode == 0, res.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def tiny_ckpt(tiny_tokenizer: Path, tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("pre")
    res = run_cli(
        "train",
        "model=tiny",
        "model.max_seq_len=2048",
        f"data.sources.text.path={tiny_shards}",
        f"data.tokenizer={tiny_tokenizer}",
        "data.seq_len=32",
        "phase.schedule.warmup_steps=0",
        "trainer.max_steps=2",
        "trainer.precision=32-true",
        "trainer.progress_bar=false",
        "logger=none",
        f"hydra.run.dir={run}",
        cwd=REPO,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    return run / "checkpoints" / "last.ckpt"


# ------------------------------------------------------------------ the reward
def _result(**kw: object) -> EpisodeResult:
    return EpisodeResult("t", **kw)  # type: ignore[arg-type]  # answer_text: what is scored


def test_parl_reward_components_and_annealing() -> None:
    task = SwarmTask("t", "wide", "q", ["a: 1", "b: 2"], width=2, data={})
    w = ParlWeights(0.5, 0.25)
    fan = _result(answer_text="Answer: a: 1; b: 2", assignments=2, completed_assignments=2, max_parallelism=2)
    r = parl_reward(task, fan, w)
    assert r["perf"] == 1.0 and r["parallel"] == 1.0 and r["finish"] == 1.0
    assert r["total"] == pytest.approx(1.0 + 0.5 + 0.25)
    # serial collapse: right answer, no sub-agents -> no r_parallel, no r_finish
    alone = parl_reward(task, _result(answer_text="Answer: a: 1; b: 2"), w)
    assert alone["parallel"] == 0.0 and alone["finish"] == 0.0 and alone["total"] == 1.0
    # spurious parallelism: many assignments, none came back
    spur = parl_reward(task, _result(answer_text="no idea", assignments=6, completed_assignments=0), w)
    assert spur["parallel"] == 1.0 and spur["finish"] == 0.0 and spur["perf"] == 0.0
    # over budget: the answer does not count
    late = parl_reward(task, _result(answer_text="Answer: a: 1; b: 2", budget_exceeded="critical_steps"), w)
    assert late["perf"] == 0.0
    half = parl_reward(task, _result(answer_text="Answer: a: 1", assignments=1, completed_assignments=1), w)
    assert half["perf"] == pytest.approx(2 / 3) and half["parallel"] == 0.5
    # held until start x max_steps, then linearly to 0 at end x max_steps
    assert annealed(0.5, 0, 10, 0.0, 1.0) == 0.5 and annealed(0.5, 5, 10, 0.0, 1.0) == 0.25
    assert annealed(0.5, 12, 10, 0.0, 1.0) == 0.0 and annealed(0.5, 8, 10) == 0.0  # default end 0.75
    assert annealed(0.5, 2, 10, 0.2, 0.6) == 0.5 and annealed(0.5, 4, 10, 0.2, 0.6) == pytest.approx(0.25)


def test_parl_lambdas_anneal_to_zero_by_default() -> None:
    """K2.5 anneals r_parallel's and r_finish's weights to 0; a config that says nothing does too."""
    from kimi_lab.config import compose, to_run_config
    from kimi_lab.swarm.reward import lambdas

    pc = to_run_config(compose(["phase=parl"])).phase.parl
    assert pc.anneal and 0 < pc.anneal_end < 1
    start, end = lambdas(pc, 0, 100), lambdas(pc, round(100 * pc.anneal_end), 100)
    assert start.lambda1 == pc.lambda1 > 0 and start.lambda2 == pc.lambda2 > 0
    assert end.lambda1 == end.lambda2 == 0.0 and lambdas(pc, 99, 100).lambda1 == 0.0
    mid = lambdas(pc, round(50 * pc.anneal_end), 100)
    assert 0 < mid.lambda1 < pc.lambda1
    pc.anneal = False  # the ablation holds them
    assert lambdas(pc, 99, 100).lambda1 == pc.lambda1


# ------------------------------------------------------- the OpenAI wire format
def test_openai_format_round_trip() -> None:
    convo = [
        Message("system", "s"),
        Message("user", "q"),
        Message("assistant", "", [ToolCall("search", "x"), ToolCall("assign_task", '{"agent": "a"}')]),
        Message("tool", "r1"),
        Message("tool", "r2"),
        Message("assistant", "Answer: 1"),
    ]
    wire = to_openai(convo)
    assert wire[2]["tool_calls"][0]["function"]["arguments"] == json.dumps({"input": "x"})
    assert [w.get("tool_call_id") for w in wire[3:5]] == ["call_2_0", "call_2_1"]
    back = from_openai(wire)
    assert [m.to_dict() for m in back] == [m.to_dict() for m in convo]
    # arguments that are not {"input": ...} pass through as JSON text; free text as is
    c = call_from_openai({"function": {"name": "assign_task", "arguments": '{"agent": "a", "prompt": "p"}'}})
    assert json.loads(c.input) == {"agent": "a", "prompt": "p"}
    assert call_from_openai({"function": {"name": "f", "arguments": "not json"}}).input == "not json"


# ----------------------------------------------------------------- swarm run
def test_swarm_run_scripted_fanout_beats_single_in_critical_steps(swarm_tasks: Path, tmp_path: Path) -> None:
    out = {}
    for policy in ("fanout", "single"):
        res = run_cli(
            "swarm", "run", "--tasks", str(swarm_tasks), "--policy", policy, "--n", "2", "--json",
            "--out", str(tmp_path / policy), cwd=REPO,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr[-2000:]
        out[policy] = json.loads(res.stdout.strip().splitlines()[-1])
    fan, single = out["fanout"], out["single"]
    assert fan["score"] == 1.0 and fan["over_budget"] == 0.0  # the decomposition solves it in budget
    assert single["over_budget"] == 1.0 and single["score"] == 0.0  # serial runs out of critical steps
    for r in fan["episodes_detail"]:
        assert r["critical_steps"] <= r["budget"] and r["subagents"] == r["width"]
        events = [json.loads(line) for line in Path(r["trace"]).read_text().splitlines()]
        assert events[-1]["agent"] == "orchestrator" and events[-1]["kind"] == "finish"
        assert events[-1]["detail"]["reward"]["perf"] == 1.0
    status = json.loads((tmp_path / "fanout" / "status.json").read_text())
    assert status["status"] == "finished"  # the dashboard lists the folder as a run


def test_swarm_run_bad_policy_is_one_line(swarm_tasks: Path, tmp_path: Path) -> None:
    res = run_cli("swarm", "run", "--tasks", str(swarm_tasks), "--policy", "magic", cwd=REPO)
    assert res.returncode == 2 and "choose from fanout, single" in res.stderr.strip().splitlines()[-1]
    res = run_cli("swarm", "run", "--tasks", str(tmp_path), cwd=REPO)
    assert res.returncode == 2 and "corpus.jsonl" in res.stderr


def test_swarm_run_with_a_checkpoint_policy(swarm_tasks: Path, tiny_ckpt: Path, tmp_path: Path) -> None:
    res = run_cli(
        "swarm", "run", "--tasks", str(swarm_tasks), "--policy", f"ckpt:{tiny_ckpt}", "--n", "2",
        "--json", "--out", str(tmp_path / "ckpt"), cwd=REPO,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    s = json.loads(res.stdout.strip().splitlines()[-1])
    assert s["episodes"] == 2
    for r in s["episodes_detail"]:  # an untrained model: whatever it did, the trace is complete
        events = [json.loads(line) for line in Path(r["trace"]).read_text().splitlines()]
        assert events[0]["kind"] in ("spawn", "message") or events[0]["agent"] == "orchestrator"
        assert events[-1]["kind"] == "finish" and events[-1]["agent"] == "orchestrator"
        assert 1 <= r["critical_steps"] <= r["budget"]


# ---------------------------------------------- served model, a real local server
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_served_checkpoint_drives_the_swarm(swarm_tasks: Path, tiny_ckpt: Path) -> None:
    import urllib.request

    from kimi_lab.config.swarm import SwarmConfig
    from kimi_lab.serving.serve import make_server
    from kimi_lab.swarm.environment import SearchEnvironment
    from kimi_lab.swarm.openai_policy import OpenAIPolicy, PolicyServerError
    from kimi_lab.swarm.prompts import SWARM_TOOLS, orchestrator_system
    from kimi_lab.swarm.runtime import run_episode
    from kimi_lab.swarm.scripted import ScriptedSubagent
    from kimi_lab.swarm.search_tasks import load_swarm_tasks

    server = make_server(str(tiny_ckpt), "127.0.0.1", _free_port())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        base = f"http://{host}:{port}/v1"
        with urllib.request.urlopen(f"{base}/models", timeout=10) as r:
            assert json.loads(r.read())["data"][0]["id"].startswith("kimi_lab/")
        policy = OpenAIPolicy(base, temperature=0.0, max_tokens=24)
        # The orchestrator's first turn, its tools listed in the system prompt and declared to the server
        tasks, corpus = load_swarm_tasks(swarm_tasks, "val")
        env_tools = SearchEnvironment(corpus).tools
        tools = [*env_tools, *SWARM_TOOLS]
        assert len(tools) >= 2  # the tool list a second rendering once duplicated
        messages = [Message("system", orchestrator_system(env_tools)), Message("user", tasks[0].question)]
        turn = asyncio.run(policy.act(messages, tools, "orchestrator"))
        assert isinstance(turn.message.content, str) and turn.message.role == "assistant"
        # the served model sees the prompt it was trained on, and greedy decoding through HTTP
        # equals greedy decoding in process
        from kimi_lab.serving.serve import ChatService
        from kimi_lab.swarm.checkpoint_policy import load_checkpoint_policy

        _, local = load_checkpoint_policy(str(tiny_ckpt), temperature=0.0, max_new_tokens=24)
        service = ChatService(local.model, local.tok, "local", local.max_seq_len)
        assert service.parse(policy.request_body(messages, tools)).prompt == local.encode(messages)
        same = asyncio.run(local.act(messages, tools, "orchestrator"))
        assert same.message.content == turn.message.content
        assert same.message.tool_calls == turn.message.tool_calls
        # a whole episode driven over HTTP ends with a complete result
        res = asyncio.run(
            run_episode(
                tasks[0], SearchEnvironment(corpus), policy, ScriptedSubagent(tasks[0]),
                SwarmConfig(max_critical_steps=4),
            )
        )  # fmt: skip
        assert res.failure is None and 1 <= res.critical_steps <= 4
        # bad requests are 400s with a message, and the server stays up
        bad = OpenAIPolicy(base, max_tokens=0)
        with pytest.raises(PolicyServerError, match="HTTP 400"):
            asyncio.run(bad.act([Message("user", "x")], [], "orchestrator"))
        req = urllib.request.Request(
            f"{base}/chat/completions", b"{not json", {"Content-Type": "application/json"}
        )
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code == 400
        assert (
            asyncio.run(policy.act([Message("user", "again")], [], "orchestrator")).message.role
            == "assistant"
        )
    finally:
        server.shutdown()
        server.server_close()


def test_checkpoint_policy_batches_concurrent_turns(tiny_ckpt: Path) -> None:
    from kimi_lab.swarm.checkpoint_policy import load_checkpoint_policy

    _, policy = load_checkpoint_policy(str(tiny_ckpt), temperature=0.0, max_new_tokens=8)
    calls = []
    import kimi_lab.swarm.checkpoint_policy as cp

    real = cp.generate

    def counting(model, prompts, *a, **kw):
        calls.append(len(prompts))
        return real(model, prompts, *a, **kw)

    cp.generate = counting
    try:

        async def many() -> list:
            msgs = [[Message("user", f"question {i}")] for i in range(5)]
            return await asyncio.gather(*(policy.act(m, [], "subagent") for m in msgs))

        turns = asyncio.run(many())
    finally:
        cp.generate = real
    assert calls == [5]  # five agents, one batched generate
    assert all(t.tokens and len(t.tokens) == len(t.logprobs) for t in turns)
    alone = asyncio.run(policy.act([Message("user", "question 3")], [], "subagent"))
    assert alone.tokens == turns[3].tokens  # batching (left padding) does not change greedy output

    # a turn that arrives while a batch is being sampled, and no turn after it: still served
    def slow(model, prompts, *a, **kw):
        time.sleep(0.3)
        return real(model, prompts, *a, **kw)

    async def late_arrival() -> list:
        first = asyncio.ensure_future(policy.act([Message("user", "first")], [], "subagent"))
        await asyncio.sleep(0.1)  # the first batch is being sampled now
        second = policy.act([Message("user", "second")], [], "subagent")
        return list(await asyncio.wait_for(asyncio.gather(first, second), timeout=30))

    cp.generate = slow
    try:
        assert all(t.tokens for t in asyncio.run(late_arrival()))
    finally:
        cp.generate = real


# ----------------------------------------------------------------- phase parl
def _parl(swarm_tasks: Path, tiny_tokenizer: Path, run: Path, *extra: str) -> list[str]:
    return [
        "train",
        "phase=parl",
        "model=tiny",
        "model.max_seq_len=2048",
        f"data.tokenizer={tiny_tokenizer}",
        f"phase.parl.tasks={swarm_tasks}",
        "phase.parl.prompts_per_step=2",
        "phase.parl.samples_per_prompt=2",
        "phase.parl.max_new_tokens=16",
        "phase.parl.swarm.max_orchestrator_steps=3",
        "phase.parl.eval_tasks=2",
        "phase.parl.traces_per_eval=2",
        "phase.parl.anneal_end=1.0",
        "trainer.max_steps=2",
        "trainer.log_every_n_steps=1",
        "trainer.val_check_interval=2",
        "trainer.limit_val_batches=1",
        "trainer.checkpoint_every_n_steps=1",
        "trainer.precision=32-true",
        "trainer.progress_bar=false",
        "logger=none",
        f"hydra.run.dir={run}",
        *extra,
    ]


def test_parl_phase_trains_the_orchestrator_and_writes_traces(
    swarm_tasks: Path, tiny_tokenizer: Path, tmp_path: Path
) -> None:
    run = tmp_path / "parl"
    res = run_cli(*_parl(swarm_tasks, tiny_tokenizer, run), cwd=REPO, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    m = pd.read_parquet(run / "metrics.parquet")
    keys = ("parl/reward", "parl/r_perf", "parl/critical_steps", "parl/subagents", "parl/lambda1")
    for key in (*keys, "parl/truncated_turns"):
        assert (m.key == key).any(), key
    assert (m[m.key == "rl/rollout_tokens_per_s"].value > 0).all()
    assert m[m.key == "rl/sampling_fraction"].value.between(0, 1, inclusive="right").all()
    lam = m[m.key == "parl/lambda1"].sort_values("step").value.tolist()
    assert lam == [0.5, 0.25]  # annealed by default, here to 0 at the end of the 2 steps
    assert (m.key == "val/parl/score").any() and (m.key == "val/parl/critical_steps").any()
    traces = sorted((run / "swarm").glob("*.jsonl"))
    assert len(traces) == 2
    for t in traces:
        events = [json.loads(line) for line in t.read_text().splitlines()]
        assert events[-1]["kind"] == "finish" and "reward" in events[-1]["detail"]
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    dm = next(v for k, v in state.items() if k.endswith("SwarmTaskDataModule"))
    assert dm == {"prompts_consumed": 4}


def test_parl_config_errors_are_one_line(swarm_tasks: Path, tiny_tokenizer: Path, tmp_path: Path) -> None:
    res = run_cli(
        *_parl(swarm_tasks, tiny_tokenizer, tmp_path / "r", "phase.parl.parallel_form=magic"), cwd=REPO
    )
    assert res.returncode == 2 and "parallel_form='magic'" in res.stderr
    res = run_cli(*_parl(tmp_path / "none", tiny_tokenizer, tmp_path / "r2"), cwd=REPO)
    assert res.returncode == 2 and "corpus.jsonl" in res.stderr


def test_swarm_sft_builder_writes_right_demonstrations_of_every_style(
    swarm_tasks: Path, tiny_tokenizer: Path, tmp_path: Path
) -> None:
    from kimi_lab.chat_format import ChatEncoder, conversation_from_list
    from kimi_lab.data.shards import iter_shard_samples
    from kimi_lab.data.tokenizer import Tokenizer
    from kimi_lab.swarm.corpus import Corpus

    def build(out: Path, n: int, *extra: str) -> subprocess.CompletedProcess:
        return run_cli(
            "data", "build", "swarm-sft", "--out", str(out), "--n", str(n), "--fanout-fraction", "0.4",
            "--overspawn-fraction", "0.3", "--seed", "3", "--widths", "2-5", "--kinds", "wide",
            "--tokenizer", str(tiny_tokenizer), *extra, cwd=REPO,
        )  # fmt: skip

    def samples(out: Path) -> list[dict]:
        urls = sorted(str(p) for p in out.glob("*.tar"))  # train and val
        return [json.loads(s["json"]) for s in iter_shard_samples(iter(urls), lambda e: False)]

    out = tmp_path / "sft"
    res = build(out, 30)
    assert res.returncode == 0, res.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    c = manifest["counts"]
    assert c["fanout"] > 0 and c["serial"] > 0 and c["overspawn"] > 0
    assert c["fanout"] + c["serial"] + c["overspawn"] == 30 and manifest["actions"] == "index"
    enc = ChatEncoder(Tokenizer(tiny_tokenizer))
    longest: dict[str, int] = {}
    for rec in samples(out):
        msgs = conversation_from_list(rec["messages"])  # a valid chat for phase sft
        names = [c.name for m in msgs for c in m.tool_calls]
        width = rec["swarm"]["width"]
        if rec["swarm"]["style"] == "serial":  # the orchestrator's own work, by item number, last first
            assert names == ["solve"] and json.loads(msgs[2].tool_calls[0].input) == {
                "items": list(range(width, 0, -1))
            }
        else:
            assert "solve" not in names and names.count("assign_task") >= width
            spawned = names.count("create_subagent")
            assert spawned == width if rec["swarm"]["style"] == "fanout" else spawned > width
        agent = "self" if rec["swarm"]["style"] == "serial" else "w{}"
        assert msgs[-1].content == "Answer:\n" + "\n".join(
            f"{i}={agent.format(i)}" for i in range(width, 0, -1)
        )
        turns = [len(enc.encode([m]).tokens) - 2 for m in msgs if m.role == "assistant"]
        longest[str(width)] = max(longest.get(str(width), 0), *turns)
    # the manifest measured every turn: the generation budget a phase needs, per width
    assert {w: manifest["turn_tokens"][w] for w in longest} == longest
    assert manifest["conversation_tokens"] > max(longest.values())
    # a budget shorter than a demonstrated turn is refused when the data is built
    short = build(tmp_path / "short", 8, "--max-turn-tokens", str(min(longest.values())))
    assert short.returncode == 2 and "over --max-turn-tokens" in short.stderr
    # the free-text language: prompts naming entities of a corpus of the demonstrations' own
    text = tmp_path / "text"
    assert build(text, 8, "--actions", "text").returncode == 0
    task_names = {d.title for d in Corpus.load(swarm_tasks / "corpus.jsonl").docs}  # same --seed
    for rec in samples(text):
        calls = [c for m in conversation_from_list(rec["messages"]) for c in m.tool_calls]
        prompts = [json.loads(c.input)["prompt"] for c in calls if c.name == "assign_task"]
        searched = {p[len("For ") :].split(",")[0] for p in prompts if p.startswith("For ")}
        assert not searched & task_names and (bool(searched) or rec["swarm"]["style"] == "serial")
    bad = run_cli(
        "data", "build", "swarm-sft", "--out", str(tmp_path / "b"), "--fanout-fraction", "2", cwd=REPO
    )
    assert bad.returncode == 2 and "--fanout-fraction 2.0" in bad.stderr
