"""``kimi-lab bench ep``: expert parallelism against data parallelism at the same global tokens.

N processes (gloo on CPU, NCCL with ``--backend nccl``) each hold a share of the
global batch. In the same processes, alternating step by step:

- EP=1: every rank holds all experts and runs its own tokens (plain data parallel);
- EP=N: every rank holds E/N experts; each token-expert pair travels to its expert's
  rank and back by all-to-all.

Printed: global tokens/s of each (the slowest rank's fwd+bwd time counts), their
ratio, and the share of the EP step spent inside the all-to-alls (the profiler's
``expert_parallel/all_to_all`` ranges, which include waiting for the other ranks).
EP's purpose is memory (each rank holds 1/N of the experts); on one machine the
ratio says what the exchange costs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.moe import Shape, _kimi_layer
from kimi_lab.cpu import cpu_description
from kimi_lab.model.moe.dispatch import ALL_TO_ALL


def _step(layer: torch.nn.Module, x: torch.Tensor, g: torch.Tensor) -> None:
    for p in layer.parameters():
        p.grad = None
    y, _ = layer(x)
    y.backward(g)


def _rank(rank: int, world: int, shape: Shape, repeats: int, warmup: int) -> dict[str, Any]:
    import torch.distributed as dist
    from torch.profiler import ProfilerActivity, profile

    from kimi_lab.parallel import expert_parallel

    torch.manual_seed(0)
    dp = _kimi_layer(shape)
    torch.manual_seed(0)
    ep = _kimi_layer(shape)
    expert_parallel.apply(ep, expert_parallel.build_mesh(world, "cpu"))
    local = shape.tokens // world
    gen = torch.Generator().manual_seed(rank)
    x = torch.randn(1, local, shape.hidden, generator=gen)
    g = torch.randn(1, local, shape.hidden, generator=gen)
    steps = {"ep1": lambda: _step(dp, x, g), f"ep{world}": lambda: _step(ep, x, g)}
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(repeats):  # round-robin: machine drift hits both alike
        for k, step in steps.items():
            dist.barrier()
            t0 = time.perf_counter()
            step()
            times[k].append(time.perf_counter() - t0)
    dist.barrier()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        steps[f"ep{world}"]()
        profiled = time.perf_counter() - t0
    a2a = sum(e.cpu_time_total for e in prof.key_averages() if e.key == ALL_TO_ALL) / 1e6
    return {"times": times, "a2a_share": a2a / profiled}


def run(
    shape: Shape, world: int = 2, repeats: int = 3, warmup: int = 1, backend: str = "gloo"
) -> dict[str, Any]:
    from kimi_lab.parallel.spawn import run_ranks

    if shape.tokens % world:
        raise ValueError(f"bench ep: --tokens {shape.tokens} must be a multiple of the {world} processes")
    if shape.experts % world:
        raise ValueError(f"bench ep: --experts {shape.experts} must be a multiple of the {world} processes")
    threads = max(1, (os.cpu_count() or 1) // world)
    with tempfile.TemporaryDirectory() as tmp:
        ranks = run_ranks(_rank, world, Path(tmp), shape, repeats, warmup, backend=backend, threads=threads)
    # a step takes as long as its slowest rank
    med = {
        k: statistics.median(max(r["times"][k][i] for r in ranks) for i in range(repeats))
        for k in ranks[0]["times"]
    }
    tps = {k: shape.tokens / t for k, t in med.items()}
    ep_key = f"ep{world}"
    return {
        "cpu": cpu_description(),
        "load_average": os.getloadavg()[0],
        "processes": world,
        "threads_per_process": threads,
        "shape": shape.__dict__,
        "step_ms": {k: t * 1e3 for k, t in med.items()},
        "tokens_per_s": tps,
        "ep_over_dp_tokens_per_s": tps[ep_key] / tps["ep1"],
        "all_to_all_share": statistics.mean(r["a2a_share"] for r in ranks),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="kimi-lab bench ep", description=__doc__.splitlines()[0])
    p.add_argument("what", nargs="?", default="ep", choices=["ep"])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--processes", type=int, default=2, help="ranks; EP is over all of them")
    p.add_argument("--tokens", type=int, default=4096, help="global tokens per step (split over ranks)")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--ffn", type=int, default=256)
    p.add_argument("--experts", type=int, default=64)
    p.add_argument("--top-k", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--backend", default="gloo", choices=["gloo"], help="gloo (CPU processes)")
    args = p.parse_args(argv)
    shape = Shape(args.tokens, args.hidden, args.ffn, args.experts, args.top_k, 1)
    res = run(shape, args.processes, args.repeats, backend=args.backend)
    if args.json:
        print(json.dumps(res))
        return res
    w = args.processes
    print(
        f"MoE layer fwd+bwd, {shape.tokens} global tokens over {w} processes ({res['threads_per_process']} "
        f"thread(s) each), hidden {shape.hidden}, {shape.experts} experts top-{shape.top_k}, FFN {shape.ffn}, "
        f"fp32; {res['cpu']}; load average {res['load_average']:.1f}"
    )
    for k, t in res["step_ms"].items():
        what = "all experts on every rank" if k == "ep1" else f"{shape.experts // w} experts per rank"
        print(f"  EP={k[2:]:<3} {t:>8.1f} ms/step  {res['tokens_per_s'][k]:>9,.0f} tokens/s  ({what})")
    print(f"  EP={w} / EP=1 tokens/s: {res['ep_over_dp_tokens_per_s']:.2f}x")
    print(f"  all-to-all share of the EP={w} step: {res['all_to_all_share']:.1%}")
    return res


if __name__ == "__main__":
    main()
