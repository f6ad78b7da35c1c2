"""``kimi-lab bench sparsity``: does adding experts at fixed active parameters cost time?

Times forward + backward of kimi_lab's MoE layer (torch backend) at the ``bench
moe`` shape while the number of routed experts grows (8 -> 64 -> 384 by default)
and top-k, expert width and tokens stay fixed, so the active FLOPs are identical.
An ideal dropless layer costs the same at every point; the printed ratio is the
slowest over the fastest (target <= 1.5 in bf16, <= 1.3 in fp32). The layers are timed round-robin in one
process so machine drift hits all of them alike.

What grows with the expert count at fixed tokens is work proportional to *total*
parameters: every expert's weights are read by its matmuls and every expert's weight
gradient is written (each expert gets tokens at these sizes), in more and smaller matmuls. The layer itself adds
none beyond that: the experts' matmuls run as one batched call over all experts where
that is measured faster (the form each count took is printed), gate and up weights are
read in place from one fused storage, and under bf16 autocast the experts keep a bf16
copy of their fp32 weights, recast once per optimizer step rather than per micro-batch
(the recast is timed on its own and printed; ``max_over_min_with_recast`` charges one per
forward + backward). The weight gradients' bf16 -> fp32 pass remains. The report
prints the total-parameter bytes next to the times so the cause is visible, and the CPU
flags and load average, since small matmuls suffer most from a busy machine
(``--threads 1`` takes OpenMP's synchronisation out of the measurement).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

import torch

from benchmarks.moe import Shape, _fwd_bwd, _kimi_layer, gains_report, recast_ms
from kimi_lab.cpu import cpu_description, cpu_has_native_bf16, tune_cpu_allocator


def run(
    experts: tuple[int, ...] = (8, 64, 384),
    base: Shape | None = None,
    repeats: int = 5,
    warmup: int = 2,
    precision: str = "auto",
) -> dict[str, Any]:
    tune_cpu_allocator()
    torch.manual_seed(0)
    base = base or Shape()
    bf16 = cpu_has_native_bf16() if precision == "auto" else precision == "bf16"
    autocast = torch.bfloat16 if bf16 else None
    x = torch.randn(1, base.tokens, base.hidden, requires_grad=True)
    grad = torch.randn(1, base.tokens, base.hidden)
    steps, expert_bytes, layers = {}, {}, {}
    for e in experts:
        if e < base.top_k:
            raise ValueError(f"bench sparsity: {e} experts is fewer than top-{base.top_k}")
        shape = Shape(base.tokens, base.hidden, base.ffn, e, base.top_k, base.shared)
        layer = _kimi_layer(shape)
        steps[e] = _fwd_bwd(layer, x, grad, autocast)
        layers[e] = layer
        expert_bytes[e] = sum(p.numel() * p.element_size() for p in layer.experts.parameters())
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[int, list[float]] = {e: [] for e in steps}
    for _ in range(repeats):
        for e, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[e].append(time.perf_counter() - t0)
    med = {e: statistics.median(ts) for e, ts in times.items()}
    recast = {e: recast_ms(layer, torch.bfloat16) if bf16 else 0.0 for e, layer in layers.items()}
    with_recast = {e: med[e] + recast[e] / 1e3 for e in med}
    return {
        "cpu": cpu_description(),
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg()[0],
        "shape": {**base.__dict__, "experts": list(experts)},
        "precision": "bf16-mixed" if bf16 else "32-true",
        "times_ms": {str(e): t * 1e3 for e, t in med.items()},
        "routed_expert_mb": {str(e): b / 2**20 for e, b in expert_bytes.items()},
        "max_over_min": max(med.values()) / min(med.values()),
        "forms": {str(e): layer.experts.last_form for e, layer in layers.items()},
        "bf16_copy_recast_ms": {str(e): r for e, r in recast.items()},
        "max_over_min_with_recast": max(with_recast.values()) / min(with_recast.values()),
        "batched_gains": gains_report(),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="kimi-lab bench sparsity", description=__doc__.splitlines()[0])
    p.add_argument("what", nargs="?", default="sparsity", choices=["sparsity"])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--experts", default="8,64,384", help="comma-separated routed-expert counts")
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--ffn", type=int, default=256)
    p.add_argument("--top-k", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    experts = tuple(int(e) for e in args.experts.split(","))
    base = Shape(args.tokens, args.hidden, args.ffn, experts[0], args.top_k, 1)
    res = run(experts, base, args.repeats, precision=args.precision)
    if args.json:
        print(json.dumps(res))
        return res
    print(
        f"MoE layer fwd+bwd at fixed active FLOPs: {base.tokens} tokens, hidden {base.hidden}, "
        f"top-{base.top_k} + 1 shared, FFN {base.ffn}, {res['precision']}; {res['cpu']}, "
        f"{res['threads']} thread(s), load average {res['load_average']:.1f}"
    )
    for e, t in res["times_ms"].items():
        recast = res["bf16_copy_recast_ms"][e]
        print(
            f"  {e:>4} routed experts  {t:>8.1f} ms   routed expert weights {res['routed_expert_mb'][e]:>7.0f} MB"
            f"   expert matmuls: {res['forms'][e]}"
            + (f"   bf16 copy recast {recast:.1f} ms" if recast else "")
        )
    for line in res["batched_gains"]:
        print(f"    measured: {line}")
    target = "1.5 bf16" if res["precision"] == "bf16-mixed" else "1.3 fp32"
    print(f"  slowest / fastest: {res['max_over_min']:.2f}x (target <= {target})")
    if res["precision"] == "bf16-mixed":
        print(
            f"  with one bf16 copy recast per fwd+bwd (no gradient accumulation): {res['max_over_min_with_recast']:.2f}x"
        )
    return res


if __name__ == "__main__":
    main()
