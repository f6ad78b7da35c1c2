"""``kimi-lab bench step``: a whole training step against transformers' DeepseekV3ForCausalLM.

Both models come from the same config and the same weights (kimi_lab's export);
both train on the same batch with the same optimizer (AdamW), each in its best
precision on this machine (kimi_lab: bf16-mixed where the CPU multiplies bf16
natively; transformers: the faster of bf16 weights and fp32 weights under
autocast). Each contender runs in its own process, so peak RSS is its own; the
processes alternate and the best of the rounds counts. MFU is against this
machine's bf16 (or fp32) matmul peak, measured in the same run. The report names the
CPU with its matmul flags and the form kimi_lab's expert matmuls took (``batched``: one
bmm over all experts; ``loop`` / ``grouped``: ragged).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

import torch
import torch.nn.functional as F


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - t0)


def flops_per_token(cfg: Any, seq_len: int) -> float:
    """6 x active parameters (embedding lookup excluded) + causal attention, forward + backward."""
    from kimi_lab.model.params import count_params

    c = count_params(cfg)
    dense = 6 * (c.active - cfg.vocab_size * cfg.hidden_size)  # the input embedding is a lookup
    a = cfg.attention
    attn = (
        6 * cfg.n_layers * a.n_heads * seq_len * (a.qk_nope_head_dim + a.qk_rope_head_dim + a.v_head_dim) // 2
    )
    return dense + attn


def _child(
    which: str, model_name: str, batch: int, seq_len: int, steps: int, warmup: int, variant: str
) -> dict[str, Any]:
    """Runs in a fresh process: build one contender, train ``steps`` steps, report speed and peak RSS."""
    from kimi_lab.config import compose, to_run_config
    from kimi_lab.cpu import tune_cpu_allocator
    from kimi_lab.model.multimodal import KimiK25

    tune_cpu_allocator()
    torch.manual_seed(0)
    cfg = to_run_config(compose([f"model={model_name}"])).model
    ours = KimiK25(cfg)
    tokens = torch.randint(32, cfg.vocab_size, (batch, seq_len + 1))
    autocast = variant in ("bf16-mixed",)
    if which == "kimi_lab":
        model: Any = ours.train()
        forward = lambda ids: model(ids).logits  # noqa: E731
    else:
        from kimi_lab.hf.in_memory import to_transformers

        model = to_transformers(ours).train()
        del ours
        model.config._attn_implementation = "sdpa"
        model.config._experts_implementation = "grouped_mm"
        if variant == "bf16-weights":
            model = model.to(torch.bfloat16)
            for layer in model.model.layers[cfg.first_k_dense :]:
                layer.mlp.gate.weight.data = (
                    layer.mlp.gate.weight.data.float()
                )  # fp32 router, as transformers keeps it
        forward = lambda ids: model(input_ids=ids).logits  # noqa: E731
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
        with ctx:
            logits = forward(tokens[:, :-1])
        F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].reshape(-1)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    t = statistics.median(times)
    from kimi_lab.model.moe.layer import MoELayer

    forms = sorted({str(m.experts.last_form) for m in model.modules() if isinstance(m, MoELayer)})
    return {
        **({"expert_forms": forms} if which == "kimi_lab" else {}),
        "step_s": t,
        "tokens_per_s": batch * seq_len / t,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _spawn(*args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.step", "--child", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        return {
            "error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"
        }
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(
    model_name: str = "small",
    batch: int = 8,
    seq_len: int = 256,
    steps: int = 6,
    warmup: int = 2,
    rounds: int = 2,
) -> dict[str, Any]:
    from kimi_lab.config import compose, to_run_config
    from kimi_lab.cpu import cpu_description, cpu_has_native_bf16

    bf16 = cpu_has_native_bf16()
    ours_variant = "bf16-mixed" if bf16 else "fp32"
    hf_variants = ["bf16-weights", "bf16-mixed"] if bf16 else ["fp32"]
    contenders = [("kimi_lab", ours_variant)] + [("transformers", v) for v in hf_variants]
    results: dict[str, list[dict[str, Any]]] = {f"{w} ({v})": [] for w, v in contenders}
    common = [model_name, str(batch), str(seq_len), str(steps), str(warmup)]
    for _ in range(rounds):
        for which, variant in contenders:
            results[f"{which} ({variant})"].append(_spawn(which, *common, variant))
    best = {}
    for name, runs in results.items():
        ok = [r for r in runs if "error" not in r]
        best[name] = max(ok, key=lambda r: r["tokens_per_s"]) if ok else runs[-1]
    cfg = to_run_config(compose([f"model={model_name}"])).model
    peak = matmul_peak(torch.bfloat16 if bf16 else torch.float32)
    fpt = flops_per_token(cfg, seq_len)
    ours = best[f"kimi_lab ({ours_variant})"]
    hf_ok = {k: v for k, v in best.items() if k.startswith("transformers") and "error" not in v}
    res: dict[str, Any] = {
        "cpu": cpu_description(),
        "model": model_name,
        "batch": batch,
        "seq_len": seq_len,
        "contenders": best,
        "matmul_peak_gflops": peak / 1e9,
        "flops_per_token": fpt,
    }
    res["kimi_lab_mfu"] = ours["tokens_per_s"] * fpt / peak
    if hf_ok:
        hf_best = max(hf_ok, key=lambda k: hf_ok[k]["tokens_per_s"])
        res["transformers_best"] = hf_best
        res["speedup_vs_transformers"] = ours["tokens_per_s"] / hf_ok[hf_best]["tokens_per_s"]
        res["transformers_mfu"] = hf_ok[hf_best]["tokens_per_s"] * fpt / peak
        res["peak_rss_vs_transformers"] = ours["peak_rss_mb"] / hf_ok[hf_best]["peak_rss_mb"]
    return res


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--child":
        which, model, batch, seq, steps, warmup, variant = argv[1:8]
        out = _child(which, model, int(batch), int(seq), int(steps), int(warmup), variant)
        print(json.dumps(out))
        return out
    p = argparse.ArgumentParser(prog="kimi-lab bench step", description=__doc__.splitlines()[0])
    p.add_argument("what", nargs="?", default="step", choices=["step"])
    p.add_argument("--json", action="store_true")
    p.add_argument("--model", default="small")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    res = run(args.model, args.batch, args.seq_len, args.steps, rounds=args.rounds)
    if args.json:
        print(json.dumps(res))
        return res
    print(f"{res['model']} training step, batch {res['batch']} x {res['seq_len']}, AdamW; {res['cpu']}")
    for name, r in res["contenders"].items():
        if "error" in r:
            print(f"  {name:<36} failed: {r['error']}")
        else:
            print(
                f"  {name:<36} {r['tokens_per_s']:>8,.0f} tokens/s  {r['step_s'] * 1e3:>7.0f} ms/step  peak RSS {r['peak_rss_mb']:,.0f} MB"
                + (f"  (expert matmuls: {', '.join(r['expert_forms'])})" if "expert_forms" in r else "")
            )
    print(
        f"  matmul peak {res['matmul_peak_gflops']:.0f} GFLOP/s; kimi_lab MFU {100 * res['kimi_lab_mfu']:.1f}%"
    )
    if "speedup_vs_transformers" in res:
        print(
            f"  tokens/s vs transformers ({res['transformers_best']}): {res['speedup_vs_transformers']:.2f}x (target >= 1.5)"
        )
        print(f"  peak RSS vs transformers: {res['peak_rss_vs_transformers']:.2f}x (target <= 1.3)")
    return res


if __name__ == "__main__":
    main()
