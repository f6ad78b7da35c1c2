"""``kimi-lab bench generate``: batched KV-cached greedy decoding, kimi_lab against transformers' generate.

Both sides get the same weights (kimi_lab's model exported with ``to_transformers``)
and the same left-padded batch (prompts of four different lengths; with a ``-vl``
model each prompt also holds an image of its own size). First the greedy tokens of
every row are compared: they must be identical, else nothing is timed. Then each
contender runs ``generate`` twice per round, with 1 and with ``--new`` new tokens,
round-robin in this process (load drift hits all alike), best round counted:

- generate tokens/s: B x new / the whole call (prompt encoding included);
- decode tokens/s: B x (new - 1) / (t(new) - t(1)), the decode steps alone;
- the same per second of CPU time the process used (robust to other load on the machine);
- the compute bound: this machine's measured fp32 matmul rate (same threads, measured
  in each round) / the useful FLOPs of a decode token (2 x the active parameters it
  multiplies + attention over the average context), and the share of it reached, in
  wall time and in CPU time.

transformers counts with its fastest experts implementation on this machine. The report
names the CPU with its matmul flags and the forms kimi_lab's experts took: the prompt's
(the training path) and a decode step's (``batched``: one bmm over all experts' padded
rows; ``grouped`` / ``loop``: ragged; see ``kimi_lab.model.moe.decode``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import torch

from kimi_lab.errors import KimiLabError


def matmul_rate(n: int = 1024, repeats: int = 8) -> tuple[float, float]:
    """fp32 FLOP/s of an n^3 matmul with the current thread count: per wall second, per CPU second."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        a @ b
    flops = 2 * n**3 * repeats
    return flops / (time.perf_counter() - t0), flops / max(time.process_time() - c0, 1e-9)


def decode_flops_per_token(cfg: Any, context: float) -> float:
    """Useful FLOPs of one decode token: 2 x the parameters it multiplies + attention over ``context``.

    Multiplied parameters: everything active per token except the input embedding (a
    lookup); the LM head counts. Attention: q.k and p.v over ``context`` cached tokens in
    the expanded MLA form, 2 x H x (n + r + v) per cached token and layer.
    """
    from kimi_lab.model.params import count_params

    c = count_params(cfg)
    a = cfg.attention
    attn = 2 * cfg.n_layers * a.n_heads * (a.qk_nope_head_dim + a.qk_rope_head_dim + a.v_head_dim) * context
    return 2 * (c.language_model_active - cfg.vocab_size * cfg.hidden_size) + attn


def make_prompts(cfg: Any, batch: int, prompt: int, seed: int = 0) -> list[Any]:
    """``batch`` prompts of four lengths (prompt, 7/8, 6/8, 5/8 of it), with an image each for a -vl model."""
    import numpy as np

    from kimi_lab.config.schema import VisionDataConfig
    from kimi_lab.data.vision import image_block
    from kimi_lab.decode.generation import Prompt

    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    low = 64 if cfg.vision is None else max(64, cfg.vision.video_token_id + 1)
    out = []
    for i in range(batch):
        n = max(1, prompt - (i % 4) * prompt // 8)
        if cfg.vision is None:
            out.append(Prompt(torch.randint(low, cfg.vocab_size, (n,), generator=g).tolist()))
            continue
        v = cfg.vision
        vd = VisionDataConfig(patch_size=v.patch_size, merge_size=v.merge_size)
        h, w = 28 * (2 + i % 3), 28 * (2 + (i // 3) % 3)  # images of several sizes
        block = image_block(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), vd)
        n = max(2, n - block.n_tokens)
        text = torch.randint(low, cfg.vocab_size, (n,), generator=g).tolist()
        out.append(Prompt(text[: n // 2] + [v.image_token_id] * block.n_tokens + text[n // 2 :], [block]))
    return out


def _hf_batch(prompts: list[Any], pad_id: int) -> dict[str, torch.Tensor]:
    from kimi_lab.decode.generation import vision_inputs

    B, L = len(prompts), max(len(p.tokens) for p in prompts)
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    mask = torch.zeros(B, L, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, L - len(p.tokens) :] = torch.tensor(p.tokens)
        mask[i, L - len(p.tokens) :] = 1
    return {"input_ids": ids, "attention_mask": mask, **vision_inputs([b for p in prompts for b in p.blocks])}


def contenders(model: Any, prompts: list[Any], pad_id: int) -> dict[str, Any]:
    """{name: generate(new) -> (B, new) tokens}: kimi_lab, and transformers per experts implementation."""
    try:
        from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS
    except ImportError as exn:
        raise KimiLabError(
            f"bench generate compares with transformers>=5: pip install -e '.[hf]' ({exn})"
        ) from None

    from kimi_lab.decode.generation import DecodeOptions, generate
    from kimi_lab.hf.in_memory import to_transformers

    # A -vl model must not sample its vision placeholders (a placeholder in the continuation
    # means different things to the two implementations): both suppress them.
    v = model.cfg.vision
    banned = () if v is None else (v.image_token_id, v.video_token_id)

    def ours(new: int) -> torch.Tensor:
        gens = generate(model, prompts, DecodeOptions(new, (), pad_id, temperature=0, banned_ids=banned))
        return torch.tensor([g.tokens for g in gens])

    hf = to_transformers(model)
    hf.config._attn_implementation = "sdpa"
    text_cfg = getattr(hf.config, "text_config", hf.config)
    batch = _hf_batch(prompts, pad_id)
    L = batch["input_ids"].shape[1]

    # Greedy, never stopping early: no end-of-sequence token, exactly ``new`` tokens per row.
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = pad_id

    def theirs(impl: str) -> Any:
        def run(new: int) -> torch.Tensor:
            text_cfg._experts_implementation = impl
            hf.config._experts_implementation = impl
            with torch.inference_mode():
                out = hf.generate(
                    **batch, do_sample=False, max_new_tokens=new, suppress_tokens=list(banned) or None
                )
            return out[:, L:]

        return run

    impls = ["eager", *sorted(k for k in ALL_EXPERTS_FUNCTIONS if k in ("grouped_mm", "batched_mm"))]
    return {"kimi_lab": ours, **{f"transformers {impl}": theirs(impl) for impl in impls}}


def run(
    model_name: str = "small", batch: int = 16, prompt: int = 128, new: int = 64, rounds: int = 3
) -> dict[str, Any]:
    from kimi_lab.config import compose, to_run_config
    from kimi_lab.cpu import cpu_description
    from kimi_lab.model.moe.layer import MoELayer
    from kimi_lab.model.multimodal import KimiK25

    if batch < 1 or prompt < 8 or new < 2:
        raise KimiLabError("bench generate: needs --batch >= 1, --prompt >= 8 and --new >= 2")
    load = os.getloadavg()
    torch.manual_seed(0)
    cfg = to_run_config(compose([f"model={model_name}"])).model
    if prompt + new > cfg.max_seq_len:
        raise KimiLabError(
            f"bench generate: --prompt + --new exceeds the model's max_seq_len {cfg.max_seq_len}"
        )
    model = KimiK25(cfg).eval()
    prompts = make_prompts(cfg, batch, prompt)
    fns = contenders(model, prompts, pad_id=0)

    reference = fns["kimi_lab"](new)
    for name, fn in fns.items():
        got = fn(new)
        if got.shape != reference.shape or not torch.equal(got, reference):
            rows = sum(int(torch.equal(a, b)) for a, b in zip(got, reference, strict=False))
            raise KimiLabError(
                f"bench generate: {name} and kimi_lab sample different greedy tokens ({rows}/{batch} rows equal)"
            )
    keys = ("t1", "tn", "c1", "cn")
    times: dict[str, dict[str, float]] = {n: dict.fromkeys(keys, float("inf")) for n in fns}
    peak, peak_cpu = 0.0, 0.0
    for _ in range(rounds):
        wall_rate, cpu_rate = matmul_rate()
        peak, peak_cpu = max(peak, wall_rate), max(peak_cpu, cpu_rate)
        for name, fn in fns.items():
            for key, k in (("1", 1), ("n", new)):
                t0, c0 = time.perf_counter(), time.process_time()
                fn(k)
                t = times[name]
                t["t" + key] = min(t["t" + key], time.perf_counter() - t0)
                t["c" + key] = min(t["c" + key], time.process_time() - c0)

    lengths = [len(p.tokens) for p in prompts]
    context = sum(lengths) / batch + new / 2
    fpt = decode_flops_per_token(cfg, context)
    bound = peak / fpt
    res: dict[str, Any] = {
        "model": model_name,
        "batch": batch,
        "prompt_tokens": [min(lengths), max(lengths)],
        "images": sum(len(p.blocks) for p in prompts),
        "new_tokens": new,
        "precision": "fp32",
        "threads": torch.get_num_threads(),
        "cpu": cpu_description(),
        "load_average": [round(x, 2) for x in (*load, *os.getloadavg())],
        "tokens_identical": True,
        "matmul_gflops": peak / 1e9,
        "matmul_gflops_per_cpu_s": peak_cpu / 1e9,
        "decode_flops_per_token": fpt,
        "decode_bound_tokens_per_s": bound,
        "contenders": {},
    }
    moe = [m for m in model.modules() if isinstance(m, MoELayer)]
    res["expert_forms"] = {
        "prompt": sorted({str(m.experts.last_form) for m in moe}),
        "decode": sorted({str(m.last_decode_form) for m in moe}),
    }
    for name, t in times.items():
        res["contenders"][name] = {
            "generate_s": t["tn"],
            "generate_tokens_per_s": batch * new / t["tn"],
            "decode_tokens_per_s": _rate(batch * (new - 1), t["tn"] - t["t1"]),
            # per second of CPU time this process used (all threads): what other load cannot inflate
            "decode_tokens_per_cpu_s": _rate(batch * (new - 1), t["cn"] - t["c1"]),
        }
    ours = res["contenders"]["kimi_lab"]
    hf = {k: v for k, v in res["contenders"].items() if k.startswith("transformers")}
    best = max(hf, key=lambda k: hf[k]["generate_tokens_per_s"])
    res["transformers_best"] = best
    res["speedup_vs_transformers"] = ours["generate_tokens_per_s"] / hf[best]["generate_tokens_per_s"]
    res["decode_speedup_vs_transformers"] = _ratio(
        ours["decode_tokens_per_s"], hf[best]["decode_tokens_per_s"]
    )
    res["decode_cpu_time_speedup_vs_transformers"] = _ratio(
        ours["decode_tokens_per_cpu_s"], hf[best]["decode_tokens_per_cpu_s"]
    )
    res["kimi_lab_share_of_bound"] = _ratio(ours["decode_tokens_per_s"], bound)
    res["transformers_share_of_bound"] = _ratio(hf[best]["decode_tokens_per_s"], bound)
    # the same in CPU time: the bound per CPU-second against decode tokens per CPU-second
    res["kimi_lab_share_of_bound_cpu_time"] = _ratio(ours["decode_tokens_per_cpu_s"], peak_cpu / fpt)
    return res


def _rate(tokens: int, seconds: float) -> float | None:
    """tokens / seconds; None when the decode steps took no measurable time (noise beat them)."""
    return tokens / seconds if seconds > 0 else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _fmt(x: float | None, spec: str, scale: float = 1.0) -> str:
    return "n/a" if x is None else format(x * scale, spec)


def _print(res: dict[str, Any]) -> None:
    images = f" with {res['images']} images" if res["images"] else ""
    print(
        f"{res['model']}: batch {res['batch']}, prompts {res['prompt_tokens'][0]}-{res['prompt_tokens'][1]} tokens"
        f"{images}, {res['new_tokens']} new tokens, greedy,"
        f" {res['precision']}, {res['threads']} threads; {res['cpu']}; load average {res['load_average'][:3]}"
    )
    print(f"  greedy tokens identical in every row: {res['tokens_identical']}")
    forms = res["expert_forms"]
    print(
        f"  kimi_lab expert matmuls: prompt {', '.join(forms['prompt'])}; decode steps {', '.join(forms['decode'])}"
    )
    for name, r in res["contenders"].items():
        print(
            f"  {name:<28} generate {r['generate_tokens_per_s']:>8,.0f} tokens/s ({r['generate_s']:.2f} s)"
            f"   decode {_fmt(r['decode_tokens_per_s'], '>8,.0f')} tokens/s"
            f" ({_fmt(r['decode_tokens_per_cpu_s'], ',.0f')} per CPU-second)"
        )
    print(
        f"  vs {res['transformers_best']}: generate {res['speedup_vs_transformers']:.2f}x (target >= 2.5),"
        f" decode {_fmt(res['decode_speedup_vs_transformers'], '.2f')}x;"
        f" decode per CPU-second {_fmt(res['decode_cpu_time_speedup_vs_transformers'], '.2f')}x"
    )
    print(
        f"  compute bound: {res['matmul_gflops']:.0f} GFLOP/s matmul / {res['decode_flops_per_token'] / 1e6:.1f}"
        f" MFLOP per decode token = {res['decode_bound_tokens_per_s']:,.0f} tokens/s;"
        f" kimi_lab reaches {_fmt(res['kimi_lab_share_of_bound'], '.1f', 100)}% (target >= 25%),"
        f" transformers {_fmt(res['transformers_share_of_bound'], '.1f', 100)}%;"
        f" in CPU time ({res['matmul_gflops_per_cpu_s']:.0f} GFLOP/s per CPU-second):"
        f" kimi_lab {_fmt(res['kimi_lab_share_of_bound_cpu_time'], '.1f', 100)}%"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="kimi-lab bench generate", description=__doc__.splitlines()[0])
    p.add_argument("what", nargs="?", default="generate", choices=["generate"])
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--model", default="small", help="a model config: small, small-vl (images in the prompts), ..."
    )
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--prompt", type=int, default=128, help="tokens of the longest prompt")
    p.add_argument("--new", type=int, default=64, help="new tokens per row")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--threads", type=int, default=None, help="torch threads for both sides (default: torch's)"
    )
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    res = run(args.model, args.batch, args.prompt, args.new, args.rounds)
    if args.json:
        print(json.dumps(res))
    else:
        _print(res)
    return res


if __name__ == "__main__":
    main()
