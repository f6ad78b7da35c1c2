"""The ``kimi-lab`` command.

  kimi-lab train [OVERRIDES...]                 train (Hydra overrides; --multirun sweeps)
  kimi-lab params [OVERRIDES...|HF_DIR] [--json] total and active parameter counts (of an HF folder:
                                                what importing it writes and needs)
  kimi-lab data build KIND [--out DIR] [...]    shards of a kind in data_pipelines/kinds.py, or the tokenizer
  kimi-lab data inspect DIR [--json]            what a folder of shards holds, and what is broken
  kimi-lab export-hf CKPT OUT_DIR [--quantize int4]  a checkpoint in the released K2 / K2.5 layout
  kimi-lab import-hf HF_DIR OUT_CKPT [--dry-run] and back, streamed: K2 (FP8), K2.5 (INT4), transformers
  kimi-lab report MULTIRUN_DIR [--also DIR...]  an experiment's report (markdown, JSON, PNG)
  kimi-lab eval CKPT --tasks NAME=DIR [--n N]   a checkpoint's score on task prompts (the sandboxed tool)
  kimi-lab experiment NAME [--scale S]          a multi-stage experiment of kimi_lab/experiments (a table)
  kimi-lab swarm run --tasks DIR [--policy P]   agent-swarm episodes with traces (fanout, single, ckpt:, openai:)
  kimi-lab consolidate SHARDED_CKPT OUT.ckpt    an FSDP2 checkpoint folder as one file (weights)
  kimi-lab serve CKPT [--port P]                a checkpoint as an OpenAI-compatible chat endpoint (streams)
  kimi-lab generate CKPT --prompt TEXT [...]    continue a prompt, tokens printed as they are sampled
  kimi-lab chat CKPT [--tools python]           talk to a checkpoint (tool calls run in the sandbox)
  kimi-lab dashboard [RUNS_DIR] [--port P]      the Streamlit dashboard (bound to 127.0.0.1)
  kimi-lab bench moe|step|sparsity|ep|data|qkclip|gpu|swarm|generate|eval  ratios against peers measured in the same run ([--json])

User errors (bad config, missing data) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from kimi_lab.errors import KimiLabError, one_line


def _cmd_params(args: argparse.Namespace) -> None:
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


def _cmd_data_build(args: argparse.Namespace) -> None:
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


def _comma_list(value: str) -> tuple[str, ...]:
    return tuple(value.split(","))


def _width_range(value: str) -> tuple[int, int]:
    lo, _, hi = value.partition("-")
    try:
        return int(lo), int(hi or lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: expected MIN-MAX, e.g. 2-12") from None


def _cmd_data_inspect(args: argparse.Namespace) -> None:
    from data_pipelines.inspect import format_report, inspect_dir

    report = inspect_dir(args.dir, previews=args.previews)
    print(json.dumps(report, indent=2) if args.json else format_report(report))


def _print_hf_plan(hf_dir: str, as_json: bool, file_mb: int = 1024) -> None:
    from kimi_lab.hf.plan import describe, format_plan

    plan = describe(hf_dir, file_bytes=file_mb << 20)
    print(json.dumps(plan, indent=2) if as_json else format_plan(plan))


def _cmd_export_hf(args: argparse.Namespace) -> None:
    from kimi_lab.hf_io import export_hf

    out = export_hf(
        args.ckpt,
        args.out_dir,
        quantize=args.quantize,
        dtype=args.dtype,
        shard_bytes=int(args.shard_gb * 2**30),
    )
    int4 = ", routed experts INT4 (compressed-tensors)" if args.quantize else ""
    print(f"exported {args.ckpt} -> {out} (transformers from_pretrained loads it{int4})")


def _cmd_import_hf(args: argparse.Namespace) -> None:
    from kimi_lab.hf_io import import_hf

    if args.dry_run or args.out_ckpt is None:
        _print_hf_plan(args.hf_dir, args.json, args.file_mb)
        return
    out, cfg = import_hf(args.hf_dir, args.out_ckpt, dtype=args.dtype, file_bytes=args.file_mb << 20)
    vision = " + vision tower" if cfg.vision is not None else ""
    print(f"imported {args.hf_dir} -> {out} (sharded; {cfg.n_layers}-layer K2 model{vision})")
    print(f"train from it: kimi-lab train phase.init_from={out}")


def _cmd_dashboard(args: argparse.Namespace) -> None:
    import os
    from pathlib import Path

    import dashboards

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


def _cmd_report(args: argparse.Namespace) -> None:
    from kimi_lab.reports import write_report

    print(f"report: {write_report(args.folder, tuple(args.also))}")


def _cmd_eval(args: argparse.Namespace) -> None:
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


def _cmd_experiment(args: argparse.Namespace) -> None:
    import importlib
    import time
    from pathlib import Path

    experiment = importlib.import_module(f"kimi_lab.experiments.{args.name}")
    out = Path(args.out or f"runs/{args.name}/{time.strftime('%Y-%m-%d_%H-%M-%S')}")
    experiment.run(out, args.scale, Path(args.data_dir), seed=args.seed)


def _cmd_swarm_run(args: argparse.Namespace) -> None:
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


def _cmd_consolidate(args: argparse.Namespace) -> None:
    from pathlib import Path

    import torch

    from kimi_lab.tracking.checkpoint_io import consolidate, is_sharded_checkpoint

    src = Path(args.checkpoint)
    if not is_sharded_checkpoint(src):
        raise KimiLabError(f"{src}: not a sharded checkpoint folder (.metadata and meta.pt expected)")
    ckpt = consolidate(src)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, out)
    n = sum(v.numel() for v in ckpt["state_dict"].values() if hasattr(v, "numel"))
    print(f"{out}: {n:,} parameters from the shards of {src} (weights only: resume from the folder itself)")


def _cmd_serve(args: argparse.Namespace) -> None:
    from kimi_lab.serve import serve  # the loader says what is wrong with a checkpoint, in one line

    serve(args.checkpoint, args.host, args.port)


def _cmd_generate(args: argparse.Namespace) -> None:
    from kimi_lab.talk import generate_command

    generate_command(args)


def _cmd_chat(args: argparse.Namespace) -> None:
    from kimi_lab.talk import chat_command

    chat_command(args)


def _add_sampling_args(p: argparse.ArgumentParser, temperature: float) -> None:
    p.add_argument("checkpoint", help="a kimi_lab checkpoint (a run's .ckpt, a sharded folder, import-hf's)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=temperature, help="0: greedy")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling: keep this much probability")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    p.add_argument("--seed", type=int, default=None, help="the same seed, the same sample")


_BENCHES = ("moe", "step", "sparsity", "ep", "data", "qkclip", "gpu", "swarm", "generate", "eval")


def _cmd_bench(args: argparse.Namespace) -> None:
    import importlib

    what = args.rest[0] if args.rest else ""
    if what not in _BENCHES:
        raise KimiLabError(f"kimi-lab bench {what or '?'}: choose one of {', '.join(_BENCHES)}")
    importlib.import_module(f"benchmarks.{what}").main(args.rest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kimi-lab", description="Kimi K2.5 research platform")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train with Hydra overrides, e.g. experiment=quickstart", add_help=False)
    p.add_argument("overrides", nargs=argparse.REMAINDER)

    p = sub.add_parser("params", help="count total and active parameters of a model config")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=k2")
    p.add_argument("--json", action="store_true", help='print {"total": ..., "active": ...}')
    p.set_defaults(func=_cmd_params)

    p = sub.add_parser("data", help="build and inspect datasets")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    from data_pipelines.kinds import KINDS

    kinds_help = "; ".join(f"{name}: {kind.what}" for name, kind in KINDS.items())
    b = data_sub.add_parser(
        "build",
        help="build WebDataset shards (or the tokenizer)",
        description=f"{kinds_help}; tokenizer: the byte-level BPE",
    )
    b.add_argument("kind", choices=[*KINDS, "tokenizer"])
    b.add_argument(
        "--out", help="output folder (default: data/<kind>; tokenizer: data/tokenizers/bpe-<V>.json)"
    )
    b.add_argument(
        "--n", type=int, default=None, help="how many samples (text: at most; others: default 200)"
    )
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--src", default=None, help="text: your .txt/.jsonl/.parquet; image-code: your .svg/.html")
    b.add_argument("--vocab-size", type=int, default=8192, help="tokenizer vocabulary size")
    b.add_argument(
        "--shard-mb",
        type=float,
        default=None,
        help="cap on a shard's size (default: 1 for text, 0.25 otherwise)",
    )
    b.add_argument(
        "--families",
        type=_comma_list,
        default=None,
        help="visual-tasks: comma-separated, e.g. count,maze (default: all)",
    )
    b.add_argument(
        "--modality", choices=("image", "text", "both"), default=None, help="visual-tasks (default image)"
    )
    b.add_argument(
        "--with-visual-traces", action="store_true", help="zero-vision-sft: mix in image trajectories"
    )
    b.add_argument(
        "--visual-fraction",
        type=float,
        default=None,
        help="zero-vision-sft: share of image trajectories (default 0.2)",
    )
    b.add_argument(
        "--fanout-fraction",
        type=float,
        default=None,
        help="swarm-sft: share of delegating (fan-out) demonstrations; the rest are serial (default 0.5)",
    )
    b.add_argument(
        "--overspawn-fraction",
        type=float,
        default=None,
        help="swarm-sft: share of fan-outs that also spawn sub-agents with vague work (default 0)",
    )
    b.add_argument(
        "--kinds",
        type=_comma_list,
        default=None,
        help="swarm-tasks, swarm-sft: comma-separated, wide,deep (default: both)",
    )
    b.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        help="swarm-tasks (default 0.2), swarm-sft (default 0.05): share of tasks held out in val",
    )
    b.add_argument(
        "--widths",
        dest="width_range",
        type=_width_range,
        default=None,
        help="swarm-tasks (default 3-6), swarm-sft (default 2-12): items per task, MIN-MAX",
    )
    b.add_argument(
        "--slack",
        type=int,
        default=None,
        help="swarm-tasks: critical steps beyond a swarm's fastest path (default 2; more lets one agent "
        "finish narrow tasks)",
    )
    b.add_argument(
        "--actions",
        choices=("index", "text"),
        default=None,
        help="swarm-sft: the orchestrator's action language (default index: items by number)",
    )
    b.add_argument(
        "--tokenizer",
        default=None,
        help="swarm-sft: the tokenizer its turns are measured with (default data/tokenizers/bpe-8192.json)",
    )
    b.add_argument(
        "--max-turn-tokens",
        type=int,
        default=None,
        help="swarm-sft: refuse demonstrations with a longer assistant turn (a generation budget)",
    )
    b.set_defaults(func=_cmd_data_build)
    i = data_sub.add_parser("inspect", help="per-shard counts, modalities, sizes, decode failures, previews")
    i.add_argument("dir", help="a folder of .tar shards, or one .tar")
    i.add_argument("--json", action="store_true")
    i.add_argument("--previews", type=int, default=3)
    i.set_defaults(func=_cmd_data_inspect)

    p = sub.add_parser(
        "export-hf", help="a checkpoint in the released K2 / K2.5 layout (transformers loads it)"
    )
    p.add_argument("ckpt", help="a checkpoint file or sharded checkpoint folder")
    p.add_argument("out_dir")
    p.add_argument("--quantize", choices=("int4",), default=None, help="routed experts as K2.5 ships them")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="unquantized tensors")
    p.add_argument("--shard-gb", type=float, default=4.0, help="cap on a safetensors shard's size")
    p.set_defaults(func=_cmd_export_hf)

    p = sub.add_parser("import-hf", help="a K2 / K2.5 HF folder (FP8, INT4 or plain) as a sharded checkpoint")
    p.add_argument("hf_dir")
    p.add_argument("out_ckpt", nargs="?", help="the sharded checkpoint folder to write (must not exist)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="the stored weights")
    p.add_argument("--file-mb", type=int, default=1024, help="output file size; bounds the import's memory")
    p.add_argument("--dry-run", action="store_true", help="print what the import would write and need")
    p.add_argument("--json", action="store_true", help="with --dry-run: the plan as JSON")
    p.set_defaults(func=_cmd_import_hf)

    p = sub.add_parser("dashboard", help="the Streamlit dashboard of a runs folder (local only by default)")
    p.add_argument("runs_dir", nargs="?", default="runs")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument(
        "--address", default="127.0.0.1", help="bind address; 0.0.0.0 exposes the dashboard to the network"
    )
    p.set_defaults(func=_cmd_dashboard)

    p = sub.add_parser("report", help="markdown + PNG report of an experiment's multirun folder")
    p.add_argument("folder", help="the multirun folder; the report is written here")
    p.add_argument(
        "--also",
        nargs="+",
        default=[],
        metavar="FOLDER",
        help="more multiruns of the same experiment to include (e.g. a later seed=1 sweep)",
    )
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("eval", help="score a checkpoint on task prompts (greedy, with the sandboxed tool)")
    p.add_argument("checkpoint")
    p.add_argument(
        "--tasks",
        action="append",
        required=True,
        metavar="NAME=FOLDER",
        help="task shards from kimi-lab data build visual-tasks (repeatable)",
    )
    p.add_argument("--n", type=int, default=32, help="prompts per task folder (its val split)")
    p.add_argument(
        "--batch-size", type=int, default=64, help="episodes decoded side by side (prompts of similar length)"
    )
    p.add_argument("--json", action="store_true")
    p.add_argument("--out", help="also write the JSON result (with per-prompt rewards and transcripts) here")
    p.set_defaults(func=_cmd_eval)

    from kimi_lab.experiments import EXPERIMENTS

    p = sub.add_parser(
        "experiment",
        help=f"run a multi-stage experiment end to end ({', '.join(EXPERIMENTS)})",
        description="; ".join(f"{name}: {what}" for name, what in EXPERIMENTS.items()),
    )
    p.add_argument("name", choices=list(EXPERIMENTS))
    p.add_argument("--scale", default="small", help="small (the measured run) or tiny (a smoke test)")
    p.add_argument("--out", help="the experiment's folder (default runs/<name>/<time>); rerun to resume")
    p.add_argument("--data-dir", default="data", help="datasets are built here when missing")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_experiment)

    p = sub.add_parser("swarm", help="agent swarm episodes (K2.5): scripted, checkpoint or served policies")
    swarm_sub = p.add_subparsers(dest="swarm_command", required=True)
    r = swarm_sub.add_parser("run", help="play swarm tasks and write traces the dashboard draws")
    r.add_argument("--tasks", required=True, help="a folder of kimi-lab data build swarm-tasks")
    r.add_argument(
        "--policy",
        default="fanout",
        help="orchestrator: fanout | single (scripted baselines), ckpt:PATH, openai:URL[#MODEL]",
    )
    r.add_argument("--subagent", default="scripted", help="scripted | ckpt:PATH | openai:URL[#MODEL]")
    r.add_argument("--split", default="val", choices=["train", "val"])
    r.add_argument("--n", type=int, default=1, help="tasks to play (the first N of the split)")
    r.add_argument("--max-critical-steps", type=int, default=0, help="0: each task's own budget")
    r.add_argument("--temperature", type=float, default=0.0, help="for model orchestrators (0: greedy)")
    r.add_argument("--single-agent", action="store_true", help="no swarm tools: the orchestrator works alone")
    r.add_argument(
        "--actions",
        choices=("index", "text"),
        default="index",
        help="the orchestrator's action language: items by number (index) or free text",
    )
    r.add_argument("--max-new-tokens", type=int, default=256, help="per turn, for model policies")
    r.add_argument("--out", help="run folder (default runs/swarm/<time>)")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=_cmd_swarm_run)

    p = sub.add_parser("consolidate", help="a sharded (FSDP2) checkpoint folder as one checkpoint file")
    p.add_argument("checkpoint")
    p.add_argument("out")
    p.set_defaults(func=_cmd_consolidate)

    p = sub.add_parser("serve", help="a checkpoint behind an OpenAI-compatible chat-completions endpoint")
    p.add_argument("checkpoint")
    p.add_argument("--host", default="127.0.0.1", help="bind address (no authentication: keep it local)")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("generate", help="continue a prompt, printing tokens as they are sampled")
    _add_sampling_args(p, temperature=0.8)
    p.add_argument("--prompt", required=True)
    p.add_argument(
        "--image", action="append", default=[], metavar="PATH", help="an image before the prompt (-vl models)"
    )
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("chat", help="an interactive chat with a checkpoint (tool calls in the sandbox)")
    _add_sampling_args(p, temperature=0.7)
    p.add_argument("--tools", default=None, choices=["python"], help="run the model's python tool calls")
    p.add_argument("--system", default=None, help="the system message (default with --tools: the tool's)")
    p.add_argument("--max-tool-rounds", type=int, default=4, help="tool calls answered per user message")
    p.set_defaults(func=_cmd_chat)

    p = sub.add_parser("bench", help="benchmarks that print ratios against peers", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if argv and argv[0] == "train":
        # Become `python -m kimi_lab.train`: Lightning's DDP launcher re-runs the
        # main module with the same arguments, which must be the Hydra overrides.
        import os

        os.execv(sys.executable, [sys.executable, "-m", "kimi_lab.train", *argv[1:]])
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except KimiLabError as exn:
        print(f"error: {one_line(exn)}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
