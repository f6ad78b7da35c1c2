"""The ``kimi-lab`` command.

  kimi-lab train [OVERRIDES...]                 train (Hydra overrides; --multirun sweeps)
  kimi-lab params [OVERRIDES...] [--json]       total and active parameter counts
  kimi-lab data build KIND [--out DIR] [...]    shards: text, image-code, video, interleaved; or the tokenizer
  kimi-lab data inspect DIR [--json]            what a folder of shards holds, and what is broken
  kimi-lab export-hf CKPT OUT_DIR               a checkpoint in transformers' kimi_k25 / deepseek_v3 format
  kimi-lab import-hf HF_DIR OUT_CKPT            and back: train from any checkpoint of that format
  kimi-lab report MULTIRUN_DIR                  an experiment's report (markdown, JSON, PNG)
  kimi-lab dashboard [RUNS_DIR] [--port P]      the Streamlit dashboard (bound to 127.0.0.1)
  kimi-lab bench moe|step|sparsity|data|qkclip  ratios against peers measured in the same run ([--json])

User errors (bad config, missing data) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from kimi_lab.errors import KimiLabError, one_line


def _cmd_params(args: argparse.Namespace) -> None:
    from kimi_lab.config import compose, to_run_config, validate_model
    from kimi_lab.model.params import count_params

    cfg = to_run_config(compose(args.overrides)).model
    validate_model(cfg)
    c = count_params(cfg)
    if args.json:
        out = {"total": c.total, "active": c.active}
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


DATA_KINDS = ("text", "image-code", "video", "interleaved", "tokenizer")


def _cmd_data_build(args: argparse.Namespace) -> None:
    if args.kind == "tokenizer":
        from kimi_lab.data.tokenizer import Tokenizer, train_tokenizer

        out = args.out or f"data/tokenizers/bpe-{args.vocab_size}.json"
        path = train_tokenizer(args.vocab_size, out)
        print(f"tokenizer: {path} ({Tokenizer(path).vocab_size} tokens)")
        return
    out = args.out or f"data/{args.kind.replace('-', '_')}"
    sizes = {"shard_bytes": int(args.shard_mb * 1e6)} if args.shard_mb else {}
    if args.kind == "text":
        from data_pipelines.text import build_text

        manifest = build_text(out, n=args.n, seed=args.seed, src=args.src, **sizes)
    elif args.kind == "image-code":
        from data_pipelines.image_code import build_image_code

        manifest = build_image_code(out, n=args.n or 200, seed=args.seed, src=args.src, **sizes)
    elif args.kind == "video":
        from data_pipelines.video import build_video

        manifest = build_video(out, n=args.n or 200, seed=args.seed, **sizes)
    else:
        from data_pipelines.interleaved import build_interleaved

        manifest = build_interleaved(out, n=args.n or 200, seed=args.seed, **sizes)
    c = manifest["counts"]
    extra = ", ".join(f"{k} {v}" for k, v in c.items() if k not in ("train", "val") and v)
    print(
        f"{args.kind} shards: {out} (train {c['train']} samples in {len(manifest['shards']['train'])} shards, "
        f"val {c['val']}{', ' + extra if extra else ''})"
    )


def _cmd_data_inspect(args: argparse.Namespace) -> None:
    from data_pipelines.inspect import format_report, inspect_dir

    report = inspect_dir(args.dir, previews=args.previews)
    print(json.dumps(report, indent=2) if args.json else format_report(report))


def _cmd_export_hf(args: argparse.Namespace) -> None:
    from kimi_lab.hf_io import export_hf

    out = export_hf(args.ckpt, args.out_dir)
    print(f"exported {args.ckpt} -> {out} (transformers from_pretrained loads it)")


def _cmd_import_hf(args: argparse.Namespace) -> None:
    from kimi_lab.hf_io import import_hf

    out, cfg = import_hf(args.hf_dir, args.out_ckpt)
    vision = " + vision tower" if cfg.vision is not None else ""
    print(f"imported {args.hf_dir} -> {out} ({cfg.n_layers}-layer K2 model{vision})")
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

    print(f"report: {write_report(args.folder)}")


_BENCHES = ("moe", "step", "sparsity", "data", "qkclip", "gpu")


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
    b = data_sub.add_parser("build", help="build WebDataset shards (or the tokenizer)")
    b.add_argument("kind", choices=DATA_KINDS)
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
    b.set_defaults(func=_cmd_data_build)
    i = data_sub.add_parser("inspect", help="per-shard counts, modalities, sizes, decode failures, previews")
    i.add_argument("dir", help="a folder of .tar shards, or one .tar")
    i.add_argument("--json", action="store_true")
    i.add_argument("--previews", type=int, default=3)
    i.set_defaults(func=_cmd_data_inspect)

    p = sub.add_parser("export-hf", help="a checkpoint as a transformers kimi_k25 / deepseek_v3 folder")
    p.add_argument("ckpt")
    p.add_argument("out_dir")
    p.set_defaults(func=_cmd_export_hf)

    p = sub.add_parser(
        "import-hf", help="a transformers kimi_k25 / deepseek_v3 folder as a kimi_lab checkpoint"
    )
    p.add_argument("hf_dir")
    p.add_argument("out_ckpt")
    p.set_defaults(func=_cmd_import_hf)

    p = sub.add_parser("dashboard", help="the Streamlit dashboard of a runs folder (local only by default)")
    p.add_argument("runs_dir", nargs="?", default="runs")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument(
        "--address", default="127.0.0.1", help="bind address; 0.0.0.0 exposes the dashboard to the network"
    )
    p.set_defaults(func=_cmd_dashboard)

    p = sub.add_parser("report", help="markdown + PNG report of an experiment's multirun folder")
    p.add_argument("folder")
    p.set_defaults(func=_cmd_report)

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
