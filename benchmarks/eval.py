"""``kimi-lab bench eval``: held-out evaluation, batched, against one small batch at a time.

Both contenders play the same greedy episodes (the python tool in the sandbox, two
turns) on the same prompts with the same model, in one process:

- ``batched``: what ``kimi-lab eval`` and ``experiment zero_vision`` do now: prompts
  sorted by length, ``--batch`` episodes decoded side by side, the tool calls of a
  batch run four sandboxes at a time;
- ``per_batch``: the earlier loop: prompts in file order, ``--old-batch`` at a time,
  each episode's tool calls after the previous episode's.

Without ``--checkpoint`` the model is a randomly initialised ``--model``: it never calls
the tool and always writes ``--max-new-tokens`` tokens (the decode-bound worst case); a
trained checkpoint exercises the tool as well. Generation itself is the same code for
both, so the ratio is what batching above it buys.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any

import torch


def _model(
    checkpoint: str | None, model: str, tokenizer: str | None, max_new_tokens: int
) -> tuple[Any, Any, Any]:
    """(model, batched runner, per-episode-tools runner)."""
    from dataclasses import replace

    from kimi_lab.config.schema import MoEBackend, ToolConfig
    from kimi_lab.rl.evaluate import load_policy
    from kimi_lab.rl.rollout import RolloutRunner

    if checkpoint:
        _, net, runner = load_policy(checkpoint, max_new_tokens, 2)
        turns = runner.turns
        tok, vision, tool, seq = turns.tok, turns.vision, turns.tool.cfg, turns.max_seq_len
    else:
        from omegaconf import OmegaConf

        from kimi_lab.config.store import compose
        from kimi_lab.data.tokenizer import load_or_train
        from kimi_lab.model.multimodal import KimiK25

        overrides = [f"model={model}"] + ([f"data.tokenizer={tokenizer}"] if tokenizer else [])
        cfg = OmegaConf.to_object(compose(overrides))
        torch.manual_seed(0)
        net = KimiK25(replace(cfg.model, moe=replace(cfg.model.moe, backend=MoEBackend.torch))).eval()
        tok = load_or_train(cfg.data.tokenizer, cfg.model.vocab_size)
        vision, tool, seq = cfg.data.vision if net.has_vision else None, ToolConfig(), cfg.model.max_seq_len
    new = RolloutRunner(tok, vision, tool, max_new_tokens, 2, seq, tool_workers=4)
    old = RolloutRunner(tok, vision, tool, max_new_tokens, 2, seq, tool_workers=1)
    return net, new, old


def run(
    tasks_dir: str,
    n: int = 64,
    batch: int = 64,
    old_batch: int = 16,
    max_new_tokens: int = 256,
    checkpoint: str | None = None,
    model: str = "small-vl",
    tokenizer: str | None = None,
) -> dict[str, Any]:
    from kimi_lab.data.task_prompts import EvalTasks, task_urls
    from kimi_lab.rl.evaluate import evaluate, score_episode

    tasks = list(EvalTasks("vision", task_urls("vision", tasks_dir, "val"), n))
    net, new, old = _model(checkpoint, model, tokenizer, max_new_tokens)
    out: dict[str, Any] = {"prompts": len(tasks), "batch": batch, "old_batch": old_batch}
    out["max_new_tokens"] = max_new_tokens
    t0 = time.perf_counter()
    episodes = []
    for i in range(0, len(tasks), old_batch):
        episodes.extend(old.run(net, tasks[i : i + old_batch], 1, temperature=0.0))
    per_batch_s = time.perf_counter() - t0
    old_rewards = [score_episode(ep) for ep in episodes]
    t0 = time.perf_counter()
    _, new_eps, new_rewards = evaluate(net, new, tasks, batch)
    batched_s = time.perf_counter() - t0
    out.update(
        per_batch_s=per_batch_s,
        batched_s=batched_s,
        speedup=per_batch_s / batched_s,
        batched_episodes_per_s=len(tasks) / batched_s,
        per_batch_episodes_per_s=len(tasks) / per_batch_s,
        tool_calls=sum(ep.tool_calls for ep in new_eps),
        same_reward=sum(a == b for a, b in zip(old_rewards, new_rewards, strict=True)),
        cpu=platform.processor() or platform.machine(),
        threads=torch.get_num_threads(),
        load_average=os.getloadavg()[0],
    )
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="kimi-lab bench eval", description=__doc__.splitlines()[0])
    p.add_argument("what", nargs="?", default="eval", choices=["eval"])
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--tasks", default="data/visual-tasks", help="a folder of kimi-lab data build visual-tasks"
    )
    p.add_argument("--n", type=int, default=64, help="held-out prompts")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--old-batch", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=256, help="per assistant turn")
    p.add_argument("--checkpoint", help="a trained kimi_lab checkpoint (default: a random --model)")
    p.add_argument("--model", default="small-vl")
    p.add_argument("--tokenizer", help="tokenizer file for a random --model (default: the data config's)")
    args = p.parse_args(argv)
    if min(args.n, args.batch, args.old_batch, args.max_new_tokens) < 1:
        p.error("--n, --batch, --old-batch and --max-new-tokens must be >= 1")
    res = run(
        args.tasks,
        args.n,
        args.batch,
        args.old_batch,
        args.max_new_tokens,
        args.checkpoint,
        args.model,
        args.tokenizer,
    )
    if args.json:
        print(json.dumps(res))
        return res
    print(
        f"evaluation of {res['prompts']} prompts, greedy, up to {res['max_new_tokens']} tokens a turn "
        f"({res['cpu']}, {res['threads']} threads, load average {res['load_average']:.1f})"
    )
    print(f"  per batch of {res['old_batch']}, tools one episode at a time: {res['per_batch_s']:.1f} s")
    print(f"  batched by length, {res['batch']} at a time, tools side by side: {res['batched_s']:.1f} s")
    print(
        f"  speedup {res['speedup']:.2f}x; {res['batched_episodes_per_s']:.2f} episodes/s; "
        f"{res['tool_calls']} tool calls; {res['same_reward']}/{res['prompts']} rewards identical"
    )
    return res


if __name__ == "__main__":
    main()
