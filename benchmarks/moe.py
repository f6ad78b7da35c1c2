"""``kimi-lab bench moe``: the MoE layer against its peers, measured side by side in one run.

Times forward + backward of one MoE layer (router, routed experts, shared
experts) at a fixed shape and prints ratios against, in the same process:

- transformers' ``DeepseekV3MoE`` at its fastest: every experts implementation it
  registers, with bf16 weights and with fp32 weights under autocast, best taken;
- a dense SwiGLU FFN with the same active FLOPs (width (top_k + shared) x F), in
  kimi_lab's precision;
- kimi_lab's layer with each expert matmul form forced (``batched``: one bmm over padded
  rows; ``ragged``: the per-expert loop or grouped GEMM), next to the form ``auto`` chose.

Ratios, not seconds, are the result: ``speedup_vs_transformers`` = t(peer) / t(ours)
(> 1: ours is faster); ``time_vs_dense`` = t(ours) / t(dense) (1 = sparse costs
nothing over dense). Under bf16 the experts keep a bf16 copy of their fp32 weights,
recast once per optimizer step, not per micro-batch: a forward + backward here reuses
it, so the recast is timed on its own and ``time_vs_dense_with_recast`` charges one per
forward + backward (a step without gradient accumulation).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from kimi_lab.config.schema import MoEBackend, MoEConfig
from kimi_lab.cpu import available_memory_bytes, cpu_description, cpu_has_native_bf16, tune_cpu_allocator
from kimi_lab.model.mlp import SwiGLU
from kimi_lab.model.moe.expert_path import measured_calibrations
from kimi_lab.model.moe.layer import MoELayer

OURS = "kimi_lab_torch"


@dataclass
class Shape:
    tokens: int = 4096
    hidden: int = 512
    ffn: int = 256
    experts: int = 64
    top_k: int = 8
    shared: int = 1

    @property
    def active_flops(self) -> float:
        """Forward + backward matmul FLOPs of the experts (3 matmuls, x3 for backward)."""
        return 3 * 2 * self.tokens * self.hidden * self.ffn * 3 * (self.top_k + self.shared)


def _fwd_bwd(
    module: torch.nn.Module, x: torch.Tensor, grad: torch.Tensor, autocast: torch.dtype | None
) -> Callable[[], None]:
    def step() -> None:
        for p in module.parameters():
            p.grad = None
        x.grad = None
        ctx = torch.autocast("cpu", dtype=autocast) if autocast is not None else contextlib.nullcontext()
        with ctx:
            y = module(x)
        y = y[0] if isinstance(y, tuple) else y
        y.backward(grad.to(y.dtype))

    return step


def _kimi_layer(s: Shape, path: str = "auto") -> MoELayer:
    """kimi_lab's layer at this shape (seeded: every path gets the same weights)."""
    torch.manual_seed(0)
    cfg = MoEConfig(
        n_routed_experts=s.experts,
        n_shared_experts=s.shared,
        top_k=s.top_k,
        expert_ffn_dim=s.ffn,
        backend=MoEBackend.torch,
    )
    layer = MoELayer(s.hidden, cfg, backend="torch")
    layer.experts.path = path
    return layer


def recast_ms(layer: MoELayer, dtype: torch.dtype, repeats: int = 3) -> float:
    """The bf16 copy's recast (what one optimizer step costs the next forward), median of ``repeats``."""
    experts = layer.experts
    times = []
    for _ in range(repeats):
        experts.compute_copy.clear()
        t0 = time.perf_counter()
        experts.compute_weights(dtype)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def gains_report() -> list[str]:
    """The expert-path calibrations made in this run, one line each (what ``auto`` chose by)."""
    return [
        f"{str(k.dtype).removeprefix('torch.')} D={k.dim} F={k.ffn} {1 << (k.rows_octave - 1)}+ rows x "
        f"{k.experts} experts {k.threads} thr{' fwd+bwd' if k.backward else ' fwd'}: bmm {c.gain:.2f}x the "
        f"{k.ragged_form} form per row; one {k.ragged_form} call = {c.call_rows:.0f} rows"
        for k, c in measured_calibrations().items()
    ]


def hf_moe_config(s: Shape, experts_implementation: str, **extra: Any) -> Any:
    """transformers' DeepseekV3Config of one MoE layer of shape ``s`` (the peer of these benchmarks)."""
    from transformers import DeepseekV3Config

    cfg = DeepseekV3Config(
        hidden_size=s.hidden,
        moe_intermediate_size=s.ffn,
        n_routed_experts=s.experts,
        num_experts_per_tok=s.top_k,
        n_shared_experts=s.shared,
        n_group=1,
        topk_group=1,
        **extra,
    )
    cfg._experts_implementation = experts_implementation
    return cfg


def _transformers_layers(s: Shape) -> dict[str, Callable[[torch.dtype], torch.nn.Module]]:
    """{experts implementation: factory(dtype)} for transformers' DeepseekV3MoE."""
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE

    impls = ["eager", *sorted(k for k in ALL_EXPERTS_FUNCTIONS if k in ("grouped_mm", "batched_mm"))]

    def factory(impl: str) -> Callable[[torch.dtype], torch.nn.Module]:
        def build(dtype: torch.dtype) -> torch.nn.Module:
            m = DeepseekV3MoE(hf_moe_config(s, impl, num_hidden_layers=2))
            for _name, p in m.named_parameters():
                torch.nn.init.normal_(p, std=0.02)
            m = m.to(dtype)
            m.gate.weight.data = m.gate.weight.data.float()  # transformers keeps the router in fp32
            return m

        return build

    return {impl: factory(impl) for impl in impls}


def _batched_mm_bytes(s: Shape, dtype: torch.dtype) -> int:
    # batched_mm materialises every (token, expert) pair's weights: 3 F x D matrices each.
    return s.tokens * s.top_k * 3 * s.ffn * s.hidden * torch.finfo(dtype).bits // 8


def run(
    s: Shape,
    repeats: int = 5,
    warmup: int = 2,
    precision: str = "auto",
    peers: tuple[str, ...] = ("transformers", "dense", "paths"),
) -> dict:
    """Build every contender, warm each up, then time them round-robin (drift hits all alike)."""
    tune_cpu_allocator()  # applies to every contender in this process alike
    bf16 = cpu_has_native_bf16() if precision == "auto" else precision == "bf16"
    ours_autocast = torch.bfloat16 if bf16 else None
    torch.manual_seed(1)
    x = torch.randn(1, s.tokens, s.hidden, requires_grad=True)
    grad = torch.randn(1, s.tokens, s.hidden)
    results: dict = {
        "shape": s.__dict__,
        "precision": "bf16-mixed" if bf16 else "32-true",
        "cpu": cpu_description(),
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg()[0],
        "times_ms": {},
    }

    ours = _kimi_layer(s)
    steps: dict[str, Callable[[], None]] = {OURS: _fwd_bwd(ours, x, grad, ours_autocast)}
    if "paths" in peers:
        for path in ("batched", "ragged"):
            steps[f"{OURS} ({path} forced)"] = _fwd_bwd(_kimi_layer(s, path), x, grad, ours_autocast)
    if "dense" in peers:
        dense = SwiGLU(s.hidden, (s.top_k + s.shared) * s.ffn)
        steps["dense_swiglu_same_active_flops"] = _fwd_bwd(dense, x, grad, ours_autocast)
    hf_names: list[str] = []
    if "transformers" in peers:
        for impl, build in _transformers_layers(s).items():
            variants = [("bf16 weights", torch.bfloat16, None)] if bf16 else []
            variants.append(("fp32 weights" + (" + autocast" if bf16 else ""), torch.float32, ours_autocast))
            for label, dtype, autocast in variants:
                name = f"transformers_{impl} ({label})"
                need = _batched_mm_bytes(s, dtype) if impl == "batched_mm" else 0
                free = available_memory_bytes()
                if free is not None and need > free // 2:
                    results["times_ms"][name] = (
                        f"skipped: gathers per-token expert weights ({need / 2**30:.0f} GiB)"
                    )
                    continue
                xin = x.detach().to(dtype).requires_grad_()
                steps[name] = _fwd_bwd(build(dtype), xin, grad, autocast)
                hf_names.append(name)

    times: dict[str, list[float]] = {name: [] for name in steps}
    for name in list(steps):
        try:
            for _ in range(warmup):
                steps[name]()
        except (RuntimeError, MemoryError) as exn:
            results["times_ms"][name] = f"failed: {str(exn).splitlines()[0][:120]}"
            del steps[name], times[name]
            gc.collect()
    for _ in range(repeats):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    results["times_ms"].update({name: t * 1e3 for name, t in med.items()})

    t_ours = med[OURS]
    results["kimi_lab_form"] = ours.experts.last_form
    results["batched_gains"] = gains_report()
    recast = recast_ms(ours, torch.bfloat16) if bf16 else 0.0
    results["bf16_copy_recast_ms"] = recast
    if "dense_swiglu_same_active_flops" in med:
        results["time_vs_dense"] = t_ours / med["dense_swiglu_same_active_flops"]
        results["time_vs_dense_with_recast"] = (t_ours + recast / 1e3) / med["dense_swiglu_same_active_flops"]
    measured = [n for n in hf_names if n in med]
    if measured:
        best = min(measured, key=med.__getitem__)
        results["transformers_best"] = best
        results["speedup_vs_transformers"] = med[best] / t_ours
    results["kimi_lab_gflops"] = s.active_flops / t_ours / 1e9
    return results


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="kimi-lab bench moe", description=__doc__.splitlines()[0])
    p.add_argument("what", nargs="?", default="moe", choices=["moe"])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--ffn", type=int, default=256)
    p.add_argument("--experts", type=int, default=64)
    p.add_argument("--top-k", type=int, default=8)
    p.add_argument("--shared", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    p.add_argument(
        "--peers",
        default="transformers,dense,paths",
        help="comma-separated: transformers, dense, paths (kimi_lab with each expert matmul form forced)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = Shape(args.tokens, args.hidden, args.ffn, args.experts, args.top_k, args.shared)
    res = run(shape, args.repeats, args.warmup, args.precision, tuple(filter(None, args.peers.split(","))))
    if args.json:
        print(json.dumps(res))
    else:
        print(
            f"MoE layer fwd+bwd, {shape.tokens} tokens, hidden {shape.hidden}, {shape.experts} experts "
            f"top-{shape.top_k} + {shape.shared} shared, FFN {shape.ffn}, {res['precision']}; {res['cpu']}, "
            f"{res['threads']} thread(s), load average {res['load_average']:.1f}"
        )
        print(f"  expert matmuls: auto chose {res['kimi_lab_form']}")
        for line in res["batched_gains"]:
            print(f"    measured: {line}")
        for name, t in res["times_ms"].items():
            print(f"  {name:<52} {t:>10.1f} ms" if isinstance(t, float) else f"  {name:<52} {t}")
        if "speedup_vs_transformers" in res:
            print(
                f"  speedup vs transformers ({res['transformers_best']}): {res['speedup_vs_transformers']:.2f}x"
            )
        if "time_vs_dense" in res:
            print(
                f"  time vs dense SwiGLU with the same active FLOPs:  {res['time_vs_dense']:.2f}x"
                f" (target <= 1.4 bf16, <= 1.3 fp32)"
            )
        if res["bf16_copy_recast_ms"]:
            print(
                f"  bf16 copy of the expert weights, recast once per optimizer step: {res['bf16_copy_recast_ms']:.1f} ms;"
                f" with one recast per fwd+bwd: {res.get('time_vs_dense_with_recast', 0):.2f}x dense"
            )
        print(f"  kimi_lab: {res['kimi_lab_gflops']:.0f} GFLOP/s")
    return res


if __name__ == "__main__":
    main()
