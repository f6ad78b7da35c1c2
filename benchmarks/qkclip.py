"""``kimi-lab bench qkclip``: what measuring every head's max logit costs a training step.

A ``small`` model's full training step (forward, backward, Muon/AdamW step, and the
QK-Clip pass) is timed with the per-head max-logit measurement off and on,
round-robin in one process. Target: measuring costs at most 10%.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F

from kimi_lab.config import compose, to_run_config
from kimi_lab.cpu import cpu_has_native_bf16, tune_cpu_allocator
from kimi_lab.model.multimodal import KimiK25
from kimi_lab.optim.groups import build_param_groups
from kimi_lab.optim.muon import MuonAdamW
from kimi_lab.optim.qk_clip import qk_clip_step, set_measuring


def run(
    model_name: str = "small",
    batch: int = 8,
    seq_len: int = 256,
    repeats: int = 8,
    warmup: int = 2,
    tau: float = 100.0,
) -> dict[str, Any]:
    tune_cpu_allocator()
    torch.manual_seed(0)
    cfg = to_run_config(compose([f"model={model_name}"])).model
    model = KimiK25(cfg).train()
    groups = build_param_groups(model, 0.1)
    opt = MuonAdamW(
        [
            {
                "params": g.params,
                "weight_decay": g.weight_decay,
                "use_muon": g.name.endswith("/matrices"),
                "fused_row_parts": g.fused_row_parts,
            }
            for g in groups
        ],
        lr=1e-4,
    )
    tokens = torch.randint(0, cfg.vocab_size, (batch, seq_len + 1))
    bf16 = cpu_has_native_bf16()

    def step(measure: bool) -> None:
        set_measuring(model, measure)
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:
            out = model(tokens[:, :-1])
        loss = F.cross_entropy(out.logits.float().flatten(0, 1), tokens[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        qk_clip_step(model, tau if measure else None)

    for _ in range(warmup):
        step(False)
        step(True)
    times: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(repeats):
        for name, measure in (("off", False), ("on", True)):
            t0 = time.perf_counter()
            step(measure)
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "model": model_name,
        "batch": batch,
        "seq_len": seq_len,
        "precision": "bf16-mixed" if bf16 else "32-true",
        "step_ms": {k: v * 1e3 for k, v in med.items()},
        "measure_cost_ratio": med["on"] / med["off"],
        "target_met": med["on"] / med["off"] <= 1.10,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="kimi-lab bench qkclip", description=__doc__.splitlines()[0])
    p.add_argument("what", nargs="?", default="qkclip", choices=["qkclip"])
    p.add_argument("--json", action="store_true")
    p.add_argument("--model", default="small")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--repeats", type=int, default=8)
    args = p.parse_args(argv)
    res = run(args.model, args.batch, args.seq_len, args.repeats)
    if args.json:
        print(json.dumps(res))
    else:
        s = res["step_ms"]
        print(f"{res['model']} training step, batch {res['batch']} x {res['seq_len']}, {res['precision']}")
        print(f"  without max-logit measurement  {s['off']:8.1f} ms")
        print(f"  with it (and the QK-Clip pass) {s['on']:8.1f} ms")
        print(f"  cost: {res['measure_cost_ratio']:.3f}x (target <= 1.10)")
    return res


if __name__ == "__main__":
    main()
