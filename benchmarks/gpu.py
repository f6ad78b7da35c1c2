"""``kimi-lab bench gpu``: the MoE layer on one CUDA GPU at the K2 layer shape.

Contenders, each built alone on the GPU in bf16 (weights and compute; fp32
masters of 384 K2 experts would not fit next to their gradients on one GPU),
timed forward + backward with CUDA events, and freed before the next:

- kimi_lab ``megablocks`` backend (MegaBlocks' grouped GEMM; needs the ``gpu`` extra),
- kimi_lab ``torch`` backend (``torch._grouped_mm``),
- transformers' ``DeepseekV3MoE`` with its ``grouped_mm`` experts.

Prints TFLOP/s of the active expert FLOPs and MFU against this GPU's bf16 matmul
peak measured in the same run. ``benchmarks/gpu.sh`` runs this together with the
``gpu``-marked tests.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from benchmarks.moe import Shape, hf_moe_config


def _time(fn: Callable[[], None], repeats: int, warmup: int, device: str) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_peak(device: str, n: int = 8192, repeats: int = 20) -> float:
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    t = _time(lambda: a @ b, repeats, 3, device)
    return 2 * n**3 / t


def _build(name: str, s: Shape, device: str) -> torch.nn.Module:
    from kimi_lab.config.schema import MoEBackend, MoEConfig
    from kimi_lab.model.moe.layer import MoELayer

    if name.startswith("kimi_lab"):
        backend = name.split("_", 2)[-1]
        cfg = MoEConfig(
            n_routed_experts=s.experts,
            n_shared_experts=s.shared,
            top_k=s.top_k,
            expert_ffn_dim=s.ffn,
            backend=MoEBackend(backend),
        )
        with torch.device(device):
            return MoELayer(s.hidden, cfg, backend=backend).to(torch.bfloat16)
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE

    cfg = hf_moe_config(s, "grouped_mm")
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            m = DeepseekV3MoE(cfg)
    finally:
        torch.set_default_dtype(default)
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.02)
    m.gate.weight.data = m.gate.weight.data.float()  # transformers keeps the router in fp32
    return m


def run(s: Shape, repeats: int = 10, warmup: int = 3, device: str = "cuda") -> dict[str, Any]:
    """``device="cpu"`` exists so the benchmark's own code can be tested without a GPU."""
    cuda = device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("kimi-lab bench gpu: needs a CUDA GPU (this machine has none)")
    peak = matmul_peak(device, n=8192 if cuda else 512, repeats=20 if cuda else 3)
    res: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "shape": s.__dict__,
        "matmul_peak_tflops": peak / 1e12,
        "contenders": {},
    }
    x = torch.randn(1, s.tokens, s.hidden, device=device, dtype=torch.bfloat16)
    grad = torch.randn_like(x)
    for name in ("kimi_lab_megablocks", "kimi_lab_torch", "transformers_grouped_mm"):
        try:
            module = _build(name, s, device)
            xin = x.clone().requires_grad_()

            def step(module: torch.nn.Module = module, xin: torch.Tensor = xin) -> None:
                for p in module.parameters():
                    p.grad = None
                y = module(xin)
                y = y[0] if isinstance(y, tuple) else y
                y.backward(grad)

            t = _time(step, repeats, warmup, device)
            tflops = s.active_flops / t / 1e12
            res["contenders"][name] = {
                "ms": t * 1e3,
                "tflops": tflops,
                "mfu": tflops * 1e12 / peak,
                "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
            }
        except Exception as exc:  # one contender failing (no MegaBlocks, OOM) must not hide the rest
            res["contenders"][name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
        module = xin = None  # type: ignore[assignment]
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    ok = {k: v for k, v in res["contenders"].items() if "error" not in v}
    if "transformers_grouped_mm" in ok:
        for k in ok:
            if k.startswith("kimi_lab"):
                res[f"{k}_speedup_vs_transformers"] = ok["transformers_grouped_mm"]["ms"] / ok[k]["ms"]
    return res


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="kimi-lab bench gpu", description=__doc__.splitlines()[0])
    p.add_argument("what", nargs="?", default="gpu", choices=["gpu"])
    p.add_argument("--json", action="store_true")
    p.add_argument("--tokens", type=int, default=16384)
    p.add_argument("--hidden", type=int, default=7168)
    p.add_argument("--ffn", type=int, default=2048)
    p.add_argument("--experts", type=int, default=384)
    p.add_argument("--top-k", type=int, default=8)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--save", metavar="PATH", help="also write the JSON result to PATH")
    args = p.parse_args(argv)
    s = Shape(args.tokens, args.hidden, args.ffn, args.experts, args.top_k, 1)
    res = run(s, args.repeats)
    if args.save:
        with open(args.save, "w") as f:
            json.dump(res, f, indent=2)
    if args.json:
        print(json.dumps(res))
        return res
    print(
        f"MoE layer fwd+bwd on {res['device']}: {s.tokens} tokens, hidden {s.hidden}, {s.experts} experts "
        f"top-{s.top_k} + 1 shared, FFN {s.ffn}, bf16; matmul peak {res['matmul_peak_tflops']:.0f} TFLOP/s"
    )
    for name, r in res["contenders"].items():
        if "error" in r:
            print(f"  {name:<26} failed: {r['error']}")
        else:
            print(
                f"  {name:<26} {r['ms']:>8.1f} ms  {r['tflops']:>6.0f} TFLOP/s  MFU {100 * r['mfu']:>4.1f}%"
                + (f"  peak {r['peak_mem_gb']:.0f} GiB" if r["peak_mem_gb"] is not None else "")
            )
    for k, v in res.items():
        if k.endswith("_speedup_vs_transformers"):
            print(f"  {k.removesuffix('_speedup_vs_transformers')} vs transformers: {v:.2f}x")
    return res


if __name__ == "__main__":
    main()
