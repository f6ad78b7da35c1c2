"""``kimi-lab bench serve``: ``kimi-lab serve`` under concurrent clients, batched against one at a time.

One server in this process (the real HTTP handler on 127.0.0.1, the real ``ChatService``),
one model; its engine is switched between the two contenders, which take turns in rounds
(load drift hits both alike), the best round counted:

- ``batched``: continuous batching, up to ``--max-batch`` requests decoded together;
- ``one_at_a_time``: the same engine with ``max_batch=1``, i.e. requests answered in turn
  (what the server did before it batched).

At 1, 4 and 16 concurrent clients (``--clients``), each client sends ``--requests`` chat
completions one after another (greedy, ``--max-tokens`` tokens each, ``ignore_eos`` so every
answer has that length, a prompt of its own): requests/s and generated tokens/s of each
contender and the ratio. Then the target: ``--target-clients`` (8) concurrent requests of
``--max-tokens`` (48) tokens must finish in under 2.5x the time of one alone (batched).
Greedy answers of the two contenders are compared: they must be the same text.

Without ``--checkpoint`` the model is a randomly initialised ``--model`` (``small``: the
quickstart's) with the data config's tokenizer.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import urllib.request
from http.server import ThreadingHTTPServer
from typing import Any

import torch

from kimi_lab.cpu import cpu_description

TARGET = 2.5


def _service(checkpoint: str | None, model: str, max_batch: int) -> Any:
    from kimi_lab.serving.serve import ChatService

    if checkpoint:
        from kimi_lab.decode.loading import load_model

        loaded = load_model(checkpoint)
        cfg, net, tok = loaded.config, loaded.model, loaded.tokenizer
        name = f"kimi_lab/{checkpoint}"
    else:
        from dataclasses import replace

        from omegaconf import OmegaConf

        from kimi_lab.config.schema import MoEBackend
        from kimi_lab.config.store import compose
        from kimi_lab.data.tokenizer import load_or_train
        from kimi_lab.model.multimodal import KimiK25

        cfg = OmegaConf.to_object(compose([f"model={model}"]))
        torch.manual_seed(0)
        net = KimiK25(replace(cfg.model, moe=replace(cfg.model.moe, backend=MoEBackend.torch))).eval()
        tok = load_or_train(cfg.data.tokenizer, cfg.model.vocab_size)
        name = f"kimi_lab/random-{model}"
    vision = cfg.data.vision if cfg.model.vision is not None else None
    return ChatService(net, tok, name, cfg.model.max_seq_len, vision, max_batch=max_batch), net


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=3600) as r:
        return json.loads(r.read())


def _clients(url: str, clients: int, requests: int, max_tokens: int) -> tuple[float, int, dict[str, str]]:
    """(seconds until every client is done, tokens generated, answer of each prompt)."""
    answers: dict[str, str] = {}
    tokens = [0] * clients
    errors: list[BaseException] = []

    def client(c: int) -> None:
        try:
            for r in range(requests):
                prompt = f"Client {c} asks question {r}: what does a mixture of experts route?"
                body = {
                    "messages": [{"role": "user", "content": prompt}],
                    "max_tokens": max_tokens,
                    "temperature": 0,
                    "ignore_eos": True,
                }
                out = _post(url, body)
                answers[prompt] = out["choices"][0]["message"]["content"]
                tokens[c] += out["usage"]["completion_tokens"]
        except BaseException as exn:  # reported after the round
            errors.append(exn)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"a client failed: {errors[0]!r}")
    return seconds, sum(tokens), answers


def run(
    checkpoint: str | None = None,
    model: str = "small",
    clients: tuple[int, ...] = (1, 4, 16),
    requests: int = 2,
    max_tokens: int = 48,
    max_batch: int = 16,
    target_clients: int = 8,
    rounds: int = 2,
) -> dict[str, Any]:
    from kimi_lab.serving.batching import Batcher
    from kimi_lab.serving.serve import make_handler

    service, net = _service(checkpoint, model, max_batch)
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(service))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1/chat/completions"
    engines = {"batched": max_batch, "one_at_a_time": 1}
    best: dict[str, dict[int, tuple[float, int]]] = {name: {} for name in engines}
    answers: dict[str, dict[str, str]] = {name: {} for name in engines}
    alone, together = float("inf"), float("inf")
    try:
        _clients(url, 1, 1, 4)  # warm up
        for _ in range(rounds):
            for name, size in engines.items():
                service.batcher.close()
                service.batcher = Batcher(net, service.tok.pad_id, service.enc.banned_ids, max_batch=size)
                for c in clients:
                    seconds, tokens, said = _clients(url, c, requests, max_tokens)
                    answers[name].update(said)
                    if seconds < best[name].get(c, (float("inf"), 0))[0]:
                        best[name][c] = (seconds, tokens)
                if name == "batched":
                    alone = min(alone, _clients(url, 1, 1, max_tokens)[0])
                    together = min(together, _clients(url, target_clients, 1, max_tokens)[0])
    finally:
        server.shutdown()
        server.server_close()
        service.batcher.close()
    out: dict[str, Any] = {
        "model": checkpoint or f"random {model}",
        "max_tokens": max_tokens,
        "requests_per_client": requests,
        "max_batch": max_batch,
        "concurrency": {},
        "same_answers": answers["batched"] == answers["one_at_a_time"],
        "one_request_s": alone,
        f"{target_clients}_concurrent_s": together,
        "target_clients": target_clients,
        "concurrent_over_one": together / alone,
        "target": TARGET,
        "cpu": cpu_description(),
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg()[0],
    }
    for c in clients:
        row = {}
        for name in engines:
            seconds, tokens = best[name][c]
            row[name] = {"requests_per_s": c * requests / seconds, "tokens_per_s": tokens / seconds}
        row["speedup"] = row["batched"]["tokens_per_s"] / row["one_at_a_time"]["tokens_per_s"]
        out["concurrency"][str(c)] = row
    return out


def _counts(value: str) -> tuple[int, ...]:
    return tuple(int(v) for v in value.split(","))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="kimi-lab bench serve", description=__doc__.splitlines()[0])
    p.add_argument("what", nargs="?", default="serve", choices=["serve"])
    p.add_argument("--json", action="store_true")
    p.add_argument("--checkpoint", help="a kimi_lab checkpoint (default: a random --model)")
    p.add_argument("--model", default="small", help="the random model's config (default: the quickstart's)")
    p.add_argument("--clients", type=_counts, default=(1, 4, 16), help="concurrent clients, comma-separated")
    p.add_argument("--requests", type=int, default=2, help="requests per client, one after another")
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--target-clients", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    if (
        min(*args.clients, args.requests, args.max_tokens, args.max_batch, args.target_clients, args.rounds)
        < 1
    ):
        p.error("every count must be >= 1")
    res = run(
        args.checkpoint,
        args.model,
        args.clients,
        args.requests,
        args.max_tokens,
        args.max_batch,
        args.target_clients,
        args.rounds,
    )
    if args.json:
        print(json.dumps(res))
        return res
    print(
        f"kimi-lab serve, {res['model']}, greedy {res['max_tokens']} tokens a request, "
        f"{res['requests_per_client']} requests per client ({res['cpu']}, {res['threads']} threads, "
        f"load average {res['load_average']:.1f})"
    )
    for c, row in res["concurrency"].items():
        b, o = row["batched"], row["one_at_a_time"]
        print(
            f"  {c:>3} clients: batched {b['requests_per_s']:.2f} req/s {b['tokens_per_s']:.1f} tok/s; "
            f"one at a time {o['requests_per_s']:.2f} req/s {o['tokens_per_s']:.1f} tok/s; "
            f"{row['speedup']:.2f}x"
        )
    n = res["target_clients"]
    verdict = "met" if res["concurrent_over_one"] < res["target"] else "NOT met"
    print(
        f"  {n} concurrent requests: {res[f'{n}_concurrent_s']:.2f} s, one alone {res['one_request_s']:.2f} s: "
        f"{res['concurrent_over_one']:.2f}x (target < {res['target']}x: {verdict})"
    )
    print(f"  greedy answers identical in both modes: {res['same_answers']}")
    return res


if __name__ == "__main__":
    main()
