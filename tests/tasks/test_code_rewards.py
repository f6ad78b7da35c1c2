"""Code-from-pixels rewards: the reference code scores 1, a blank page about 0, hostile code 0 unharmed."""

from __future__ import annotations

import dataclasses
import http.server
import json
import threading
from pathlib import Path

import numpy as np
import pytest

import kimi_lab.tasks.code_rewards as code_rewards
from kimi_lab.chat_format import Message
from kimi_lab.data.shards import iter_shard_samples
from kimi_lab.data.task_prompts import TaskInput, task_from_sample
from kimi_lab.rl.evaluate import score_episode
from kimi_lab.rl.rollout import Episode
from kimi_lab.tasks.code_rewards import code_score, structure_similarity
from kimi_lab.tools.render_worker import PageRenderer, RenderLimits, tree_rss_mb
from kimi_lab.tools.renderers import svg_structure

BLANK = {
    "html": "<!DOCTYPE html><html><body></body></html>",
    "svg": '<svg xmlns="http://www.w3.org/2000/svg"></svg>',
}
FROZEN = "<style>*{animation:none!important;transition:none!important}</style>"


@pytest.fixture(scope="module")
def renderer() -> PageRenderer:
    """The process's shared render worker (what rewards use; the other reward tests reuse it)."""
    return code_rewards.shared_renderer()


def _prompts(folder: Path) -> list[TaskInput]:
    """The SFT conversations as prompts (their reply dropped): what RL and evaluation read."""
    out = []
    for sample in iter_shard_samples(iter(sorted(str(p) for p in folder.glob("*.tar"))), None):
        record = json.loads(sample["json"])
        record["messages"] = record["messages"][:-1]
        out.append(task_from_sample({**sample, "json": json.dumps(record).encode()}, "code"))
    return sorted(out, key=lambda t: t.task["family"])


def test_the_reference_scores_one_a_blank_page_about_zero(
    code_task_shards: Path, renderer: PageRenderer
) -> None:
    tasks = _prompts(code_task_shards)
    assert [t.task["family"] for t in tasks] == ["html_recording", "html_screenshot", "svg_screenshot"]
    for task in tasks:
        answer = task.task["answer"]
        # A still page renders identically; a recording's frames may differ by a few pixels under load
        # (compositor-driven CSS motion can lag the virtual clock: 0.99879 measured at load 4-6).
        exact = 1e-6 if task.task["family"] != "html_recording" else 5e-3
        targets = task.targets or list(task.images.values())
        assert len(targets) == len(answer["times_ms"])
        ref = code_score(
            f"Here it is:\n```{answer['kind']}\n{answer['code']}\n```", targets, answer, renderer
        )
        assert ref.rendered and ref.reward == pytest.approx(1.0, abs=exact), task.task["family"]
        blank = code_score(BLANK[answer["kind"]], targets, answer, renderer)
        assert blank.rendered and blank.reward < 0.05, (task.task["family"], blank)
        none = code_score("I would write a page with a header.", targets, answer, renderer)
        assert not none.rendered and none.reward == 0.0
        # RL and evaluation score an episode the same way (with the shared renderer, this one)
        episode = Episode(task=task, messages=[*task.messages, Message("assistant", answer["code"])])
        assert score_episode(episode) == pytest.approx(1.0, abs=exact)
    # A recording is compared frame by frame at its times: the page without its motion loses reward.
    recording = tasks[0]
    answer = recording.task["answer"]
    still = answer["code"].replace("<script>", "<script>throw 0;").replace("</head>", FROZEN + "</head>")
    frozen = code_score(still, recording.targets, answer, renderer)
    assert frozen.rendered and 0.0 < frozen.reward < 0.999


def test_structure_counts_the_elements_and_words_the_target_shows() -> None:
    true = {"tags": {"h3": 1, "li": 3}, "text": "Orbit\nalpha beta gamma"}
    assert structure_similarity(true, true) == 1.0
    missing = structure_similarity({"tags": {"h3": 1, "li": 1}, "text": "Orbit alpha"}, true)
    padded = structure_similarity({"tags": {"h3": 1, "li": 30}, "text": "Orbit alpha beta gamma " * 20}, true)
    assert 0.0 < missing < 1.0 and 0.0 < padded < 1.0
    assert structure_similarity({"tags": {}, "text": ""}, true) == 0.0
    svg = '<svg><rect/><text x="1">Hi there</text><circle/><circle/></svg>'
    assert svg_structure(svg) == {"tags": {"rect": 1, "text": 1, "circle": 2}, "text": "Hi there"}


class _Counter(http.server.BaseHTTPRequestHandler):
    hits = 0

    def do_GET(self) -> None:
        type(self).hits += 1
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_hostile_code_scores_zero_and_harms_nothing() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Counter)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    target = np.full((48, 64, 3), 255, np.uint8)
    target[8:40, 8:56] = (214, 40, 40)
    answer = {"kind": "html", "times_ms": [0, 250]}
    page = "<!DOCTYPE html><html><body style='margin:0'>{}</body></html>"
    try:
        with PageRenderer(RenderLimits(wall_s=4)) as r:
            loop = page.format("<script>setTimeout(()=>{for(;;){}}, 100)</script>")
            heap = page.format("<script>const a=[];for(;;)a.push(new Array(1e6).fill(1))</script>")
            for code in (loop, heap):
                got = code_score(code, [target, target], answer, r)
                assert not got.rendered and got.reward == 0.0
            reach = page.format(
                f"<img src='{url}img'><iframe src='{url}frame'></iframe><iframe src='file:///etc/passwd'></iframe>"
                f"<script>fetch('{url}fetch').catch(()=>0);try{{new WebSocket('ws://127.0.0.1:"
                f"{server.server_address[1]}/ws')}}catch(e){{}};fetch('file:///etc/passwd').then(r=>r.text())"
                ".then(t=>document.body.innerText=t).catch(()=>0)</script>"
            )
            # What the page can reach is checked here, not how long it may run: a generous clock, since
            # the 4 s one (right after the bombs above restarted the worker) ran out once under load.
            r.limits = dataclasses.replace(r.limits, wall_s=30)
            got = r.render("html", reach, 64, 48, [0, 1000])
            assert got is not None and "root:" not in got.structure["text"]
            # Memory outside the JavaScript heap (array buffers) meets the process tree's budget.
            r.limits = dataclasses.replace(r.limits, memory_mb=int(tree_rss_mb(r.proc.pid)) + 300)
            bomb = page.format(
                "<script>const a=[];for(let i=0;i<64;i++)a.push(new Uint8Array(1<<26).fill(1))</script>"
            )
            assert r.render("html", bomb, 64, 48, [0]) is None and r.last_error
            r.limits = RenderLimits(wall_s=4)
            good = page.format(
                "<div style='position:absolute;left:8px;top:8px;width:48px;height:32px;background:#d62828'></div>"
            )
            assert code_score(good, [target, target], answer, r).reward == pytest.approx(1.0, abs=1e-6)
            assert r.restarts >= 2  # killed on the way, and back for the next page
    finally:
        server.shutdown()
    assert _Counter.hits == 0
