"""What each ``kimi-lab`` command does; ``kimi_lab.cli`` is the table of commands and their flags.

Each function takes the parsed arguments of its command. A user error raises ``KimiLabError``
(``cli.main`` prints it on one line and exits with status 2). Heavy imports stay inside the
functions, so ``kimi-lab --help`` answers at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from kimi_lab.errors import KimiLabError


def params(args: argparse.Namespace) -> None:
    from kimi_lab.config import compose, to_run_config, validate_model
    from kimi_lab.model.params import count_params, decode_cache

    if len(args.overrides) == 1 and os.path.isdir(args.overrides[0]):  # an HF folder: what an import makes
        _print_hf_plan(args.overrides[0], args.json)
        return

    cfg = to_run_config(compose(args.overrides)).model
    validate_model(cfg)
    c = count_params(cfg)
    cache = decode_cache(cfg)
    if args.json:
        out = {"total": c.total, "active": c.active, "decode_cache": cache}
        if cfg.vision is not None:
            out["language_model"] = {"total": c.language_model, "active": c.language_model_active}
            out["vision"] = {"vision_tower": c.vision_tower, "projector": c.projector}
        print(json.dumps(out))
        return
    print(f"model {cfg.name}: {c.total:,} parameters in total, {c.active:,} active per token")
    if cfg.vision is not None:
        print(f"  language model   {c.language_model:>20,} total {c.language_model_active:>18,} active")
    for key, value in c.as_dict().items():
        if key not in ("total", "active") and (value or key not in ("vision_tower", "projector")):
            print(f"  {key:<16} {value:>20,}")
    print(
        f"decode cache (MLA latent): {cache['values_per_token_per_layer']} values per token and layer"
        f" (expanded keys and values: {cache['expanded_values_per_token_per_layer']:,}),"
        f" {cache['bytes_per_token_bf16']:,} bytes per token in bf16 over {cache['layers']} layers"
    )


def plan(args: argparse.Namespace) -> None:
    from kimi_lab.config import compose, to_run_config, validate_run
    from kimi_lab.parallel.memory_plan import fits, plan_memory, render

    cfg = to_run_config(compose(args.overrides))
    validate_run(cfg)
    memory = plan_memory(cfg)
    if args.json:
        print(json.dumps({**memory.as_dict(), "fits": fits(memory)}))
        return
    print(render(memory, cfg))


def data_build(args: argparse.Namespace) -> None:
    if args.kind == "tokenizer":
        from kimi_lab.data.tokenizer import Tokenizer, train_tokenizer

        out = args.out or f"data/tokenizers/bpe-{args.vocab_size}.json"
        path = train_tokenizer(args.vocab_size, out)
        print(f"tokenizer: {path} ({Tokenizer(path).vocab_size} tokens)")
        return
    from data_pipelines.kinds import KINDS, OPTIONS

    kind = KINDS[args.kind]
    given = {name: getattr(args, name) for name in OPTIONS if getattr(args, name) not in (None, False)}
    if stray := sorted(set(given) - set(kind.options)):
        flags = ", ".join("--" + name.replace("_", "-") for name in stray)
        raise KimiLabError(f"data build {args.kind}: {flags} does not apply to this kind")
    if args.n is not None:
        given["n"] = args.n
    if args.shard_mb:
        given["shard_bytes"] = int(args.shard_mb * 1e6)
    out = args.out or f"data/{args.kind.replace('-', '_')}"
    manifest = kind.load()(out, seed=args.seed, **given)
    c = manifest["counts"]
    extra = ", ".join(f"{k} {v}" for k, v in c.items() if k not in ("train", "val") and v)
    print(
        f"{args.kind} shards: {out} (train {c['train']} samples in {len(manifest['shards']['train'])} shards, "
        f"val {c['val']}{', ' + extra if extra else ''})"
    )


def data_inspect(args: argparse.Namespace) -> None:
    from data_pipelines.inspect import format_report, inspect_dir

    report = inspect_dir(args.dir, previews=args.previews)
    print(json.dumps(report, indent=2) if args.json else format_report(report))


def _print_hf_plan(hf_dir: str, as_json: bool, file_mb: int = 1024) -> None:
    from kimi_lab.hf.plan import describe, format_plan

    plan = describe(hf_dir, file_bytes=file_mb << 20)
    print(json.dumps(plan, indent=2) if as_json else format_plan(plan))


def export_hf(args: argparse.Namespace) -> None:
    from kimi_lab.hf.exporter import export_hf as export

    out = export(
        args.ckpt,
        args.out_dir,
        quantize=args.quantize,
        dtype=args.dtype,
        shard_bytes=int(args.shard_gb * 2**30),
    )
    int4 = ", routed experts INT4 (compressed-tensors)" if args.quantize else ""
    print(f"exported {args.ckpt} -> {out} (transformers from_pretrained loads it{int4})")


def import_hf(args: argparse.Namespace) -> None:
    from kimi_lab.hf.importer import import_hf as import_folder

    if args.dry_run or args.out_ckpt is None:
        _print_hf_plan(args.hf_dir, args.json, args.file_mb)
        return
    out, cfg = import_folder(args.hf_dir, args.out_ckpt, dtype=args.dtype, file_bytes=args.file_mb << 20)
    vision = " + vision tower" if cfg.vision is not None else ""
    print(f"imported {args.hf_dir} -> {out} (sharded; {cfg.n_layers}-layer K2 model{vision})")
    print(f"train from it: kimi-lab train phase.init_from={out}")


def dashboard(args: argparse.Namespace) -> None:
    import os
    from pathlib import Path

    import dashboards
    from kimi_lab.ports import check_port_free

    # before saying where it runs, and before Streamlit starts
    check_port_free(args.address, args.port, host_option="--address")
    app = Path(dashboards.__file__).parent / "app.py"
    print(f"kimi_lab dashboard for {args.runs_dir}: http://{args.address}:{args.port}", flush=True)
    os.execv(
        sys.executable,
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            str(app),
            "--server.headless",
            "true",
            "--server.address",
            args.address,
            "--server.port",
            str(args.port),
            "--browser.gatherUsageStats",
            "false",
            "--client.toolbarMode",
            "minimal",
            "--",
            "--runs-dir",
            args.runs_dir,
        ],
    )


def report(args: argparse.Namespace) -> None:
    from kimi_lab.reports import write_report

    print(f"report: {write_report(args.folder, tuple(args.also))}")


def eval_tasks(args: argparse.Namespace) -> None:
    from kimi_lab.rl.evaluate import evaluate_checkpoint

    tasks = {}
    for item in args.tasks:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise KimiLabError(f"--tasks {item}: expected NAME=FOLDER, e.g. vision=data/visual-tasks")
        tasks[name] = path

    def progress(done: int, total: int) -> None:
        print(f"eval: {done}/{total} episodes", file=sys.stderr, flush=True)

    result = evaluate_checkpoint(
        args.checkpoint, tasks, args.n, batch_size=args.batch_size, progress=progress
    )
    if args.out:
        from pathlib import Path

        Path(args.out).write_text(json.dumps(result, indent=2))
    if args.json:
        print(json.dumps(result))
        return
    s = result["summary"]
    print(f"{args.checkpoint}: greedy, one sample per prompt, the python tool in the sandbox")
    for key, v in s.items():
        if isinstance(v, dict):
            print(f"  {key:<24} n={v['n']:<4} reward {v['reward']:.3f}  accuracy {v['accuracy']:.2f}")
    print(
        f"  tool calls per episode {s['tool_calls_per_episode']:.2f}, tool error rate "
        f"{s['tool_error_rate']:.2f}, sampled tokens per episode {s['response_tokens']:.0f}"
    )


def evaluate(args: argparse.Namespace) -> None:
    from kimi_lab.serving.harness import evaluate_command

    evaluate_command(args)


def experiment(args: argparse.Namespace) -> None:
    import importlib
    import time
    from pathlib import Path

    experiment = importlib.import_module(f"kimi_lab.experiments.{args.name}")
    out = Path(args.out or f"runs/{args.name}/{time.strftime('%Y-%m-%d_%H-%M-%S')}")
    experiment.run(out, args.scale, Path(args.data_dir), seed=args.seed)


def swarm_run(args: argparse.Namespace) -> None:
    import time
    from pathlib import Path

    from kimi_lab.swarm.play import run_swarm

    out = Path(args.out or f"runs/swarm/{time.strftime('%Y-%m-%d_%H-%M-%S')}")
    s = run_swarm(
        args.tasks,
        out,
        orchestrator=args.policy,
        subagent=args.subagent,
        split=args.split,
        n=args.n,
        max_critical_steps=args.max_critical_steps or None,
        temperature=args.temperature,
        single_agent=args.single_agent,
        actions=args.actions,
        max_new_tokens=args.max_new_tokens,
    )
    if args.json:
        print(json.dumps(s))
        return
    print(f"{s['episodes']} episode(s), orchestrator {s['orchestrator']}, sub-agents {s['subagent']}")
    for r in s["episodes_detail"]:
        over = f"  over budget: {r['over_budget']}" if r["over_budget"] else ""
        print(
            f"  {r['task']:<28} {r['kind']:<5} width {r['width']}  score {r['score']:.2f}  critical steps "
            f"{r['critical_steps']}/{r['budget']}  total steps {r['total_steps']}  sub-agents {r['subagents']}{over}"
        )
    print(f"mean score {s['score']:.3f}, mean critical steps {s['critical_steps']:.1f}")
    print(f"traces: {out}/swarm/ (kimi-lab dashboard {out.parent} shows them)")


def consolidate(args: argparse.Namespace) -> None:
    from pathlib import Path

    import torch

    from kimi_lab.tracking.checkpoint_io import consolidate as consolidated
    from kimi_lab.tracking.checkpoint_io import is_sharded_checkpoint

    src = Path(args.checkpoint)
    if not is_sharded_checkpoint(src):
        raise KimiLabError(f"{src}: not a sharded checkpoint folder (.metadata and meta.pt expected)")
    ckpt = consolidated(src)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, out)
    n = sum(v.numel() for v in ckpt["state_dict"].values() if hasattr(v, "numel"))
    print(f"{out}: {n:,} parameters from the shards of {src} (weights only: resume from the folder itself)")


def serve(args: argparse.Namespace) -> None:
    from kimi_lab.ports import check_port_free

    check_port_free(args.host, args.port)  # before the model loads
    from kimi_lab.serving.serve import serve as serve_checkpoint  # the loader says what is wrong, in one line

    serve_checkpoint(args.checkpoint, args.host, args.port, args.max_batch)


def _quiet_unless_verbose(args: argparse.Namespace) -> None:
    # The terminal shows the sampled text: diagnostics (the experts backend, ...) only on --verbose.
    if not args.verbose:
        logging.getLogger().setLevel(logging.WARNING)


def generate(args: argparse.Namespace) -> None:
    from kimi_lab.serving.chat_session import generate_command

    _quiet_unless_verbose(args)
    generate_command(args)


def chat(args: argparse.Namespace) -> None:
    from kimi_lab.serving.chat_session import chat_command

    _quiet_unless_verbose(args)
    chat_command(args)


BENCHES = (
    "moe",
    "step",
    "sparsity",
    "ep",
    "memory",
    "data",
    "qkclip",
    "gpu",
    "swarm",
    "generate",
    "eval",
    "serve",
)


def bench(args: argparse.Namespace) -> None:
    import importlib

    what = args.rest[0] if args.rest else ""
    if what not in BENCHES:
        raise KimiLabError(f"kimi-lab bench {what or '?'}: choose one of {', '.join(BENCHES)}")
    importlib.import_module(f"benchmarks.{what}").main(args.rest)
