"""The ``kimi-lab`` command.

  kimi-lab train [OVERRIDES...]                 train (Hydra overrides; --multirun sweeps)
  kimi-lab params [OVERRIDES...] [--json]       total and active parameter counts
  kimi-lab data build tokenizer|text [...]      build the tokenizer or text shards
  kimi-lab bench moe [--json] [...]             MoE layer speed against its peers

User errors (bad config, missing data) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from kimi_lab.errors import KimiLabError


def _cmd_params(args: argparse.Namespace) -> None:
    from kimi_lab.config import compose, to_run_config, validate_model
    from kimi_lab.model.params import count_params

    cfg = to_run_config(compose(args.overrides)).model
    validate_model(cfg)
    c = count_params(cfg)
    if args.json:
        print(json.dumps({"total": c.total, "active": c.active}))
        return
    print(f"model {cfg.name}: {c.total:,} parameters in total, {c.active:,} active per token")
    for key, value in c.as_dict().items():
        if key not in ("total", "active"):
            print(f"  {key:<16} {value:>20,}")


def _cmd_data_build(args: argparse.Namespace) -> None:
    if args.kind == "tokenizer":
        from kimi_lab.data.tokenizer import Tokenizer, train_tokenizer

        out = args.out or f"data/tokenizers/bpe-{args.vocab_size}.json"
        path = train_tokenizer(args.vocab_size, out)
        print(f"tokenizer: {path} ({Tokenizer(path).vocab_size} tokens)")
    elif args.kind == "text":
        from data_pipelines.text import build_text

        out = args.out or "data/text"
        manifest = build_text(out, n=args.n, seed=args.seed, src=args.src)
        c = manifest["counts"]
        print(
            f"text shards: {out} (train {c['train']} docs in {len(manifest['shards']['train'])} shards, "
            f"val {c['val']} docs, {c['duplicates']} duplicates dropped)"
        )


def _cmd_bench(args: argparse.Namespace) -> None:
    from benchmarks.moe import main as bench_moe

    bench_moe(args.rest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kimi-lab", description="Kimi K2.5 research platform")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train with Hydra overrides, e.g. experiment=quickstart", add_help=False)
    p.add_argument("overrides", nargs=argparse.REMAINDER)

    p = sub.add_parser("params", help="count total and active parameters of a model config")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=k2")
    p.add_argument("--json", action="store_true", help='print {"total": ..., "active": ...}')
    p.set_defaults(func=_cmd_params)

    p = sub.add_parser("data", help="build datasets (shards, tokenizer)")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    b = data_sub.add_parser("build", help="build a dataset")
    b.add_argument("kind", choices=["tokenizer", "text"])
    b.add_argument("--out", help="output path (default: data/text, data/tokenizers/bpe-<V>.json)")
    b.add_argument("--n", type=int, default=None, help="at most this many documents")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument(
        "--src", default=None, help="your own .txt/.jsonl/.parquet files instead of the stdlib corpus"
    )
    b.add_argument("--vocab-size", type=int, default=8192, help="tokenizer vocabulary size")
    b.set_defaults(func=_cmd_data_build)

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
        print(f"error: {exn}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
