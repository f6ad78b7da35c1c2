"""The ``kimi-lab`` command.

  kimi-lab train [OVERRIDES...]                 train (Hydra overrides; --multirun sweeps)
  kimi-lab params [OVERRIDES...|HF_DIR] [--json] total and active parameter counts (of an HF folder:
                                                what importing it writes and needs)
  kimi-lab plan [OVERRIDES...] [--json]         memory per rank (parameters, gradients, optimizer, activations,
                                                buffers) and whether it fits an H100 / H200; what to turn if not
  kimi-lab data build KIND [--out DIR] [...]    shards of a kind in data_pipelines/kinds.py, or the tokenizer
  kimi-lab data inspect DIR [--json]            what a folder of shards holds, and what is broken
  kimi-lab export-hf CKPT OUT_DIR [--quantize int4]  a checkpoint in the released K2 / K2.5 layout
  kimi-lab import-hf HF_DIR OUT_CKPT [--dry-run] and back, streamed: K2 (FP8), K2.5 (INT4), transformers
  kimi-lab report MULTIRUN_DIR [--also DIR...]  an experiment's report (markdown, JSON, PNG)
  kimi-lab eval CKPT --tasks NAME=DIR [--n N]   a checkpoint's score on task prompts (the sandboxed tool)
  kimi-lab evaluate CKPT --tasks T1,T2 [...]    lm-evaluation-harness tasks on a checkpoint (lm-eval's JSON)
  kimi-lab experiment NAME [--scale S]          a multi-stage experiment of kimi_lab/experiments (a table)
  kimi-lab swarm run --tasks DIR [--policy P]   agent-swarm episodes with traces (fanout, single, ckpt:, openai:)
  kimi-lab consolidate SHARDED_CKPT OUT.ckpt    an FSDP2 checkpoint folder as one file (weights)
  kimi-lab serve CKPT [--port P]                a checkpoint as an OpenAI-compatible chat endpoint
                                                (streams, batches concurrent clients, takes images)
  kimi-lab generate CKPT --prompt TEXT [...]    continue a prompt, tokens printed as they are sampled
  kimi-lab chat CKPT [--tools python]           talk to a checkpoint (tool calls run in the sandbox)
  kimi-lab dashboard [RUNS_DIR] [--port P]      the Streamlit dashboard (bound to 127.0.0.1)
  kimi-lab bench moe|step|sparsity|ep|memory|data|qkclip|gpu|swarm|generate|eval|serve  ratios against peers measured in the same run ([--json])

User errors (bad config, missing data) print one line and exit with status 2.

The commands are one table, ``COMMANDS``: a name (or a group of names), the function that
runs it (``kimi_lab.commands``), its help and its arguments; adding a command is one entry.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kimi_lab import commands
from kimi_lab.errors import KimiLabError, one_line


@dataclass(frozen=True)
class Arg:
    """One ``add_argument`` call: its flags (or positional name) and keywords. A keyword given as
    ``Lazy(f)`` is ``f()``, read when the parser is built (choices from a table of kinds, say)."""

    flags: tuple[str, ...]
    options: dict[str, Any]


@dataclass(frozen=True)
class Lazy:
    make: Callable[[], Any]


def arg(*flags: str, **options: Any) -> Arg:
    return Arg(flags, options)


@dataclass(frozen=True)
class Command:
    """A command: the function that runs it (``commands.*``), its one-line help, its arguments."""

    run: Callable[[argparse.Namespace], None] | None
    help: str | Lazy
    args: tuple[Arg, ...] = ()
    description: str | Lazy | None = None
    add_help: bool = True


def _comma_list(value: str) -> tuple[str, ...]:
    return tuple(value.split(","))


def _width_range(value: str) -> tuple[int, int]:
    lo, _, hi = value.partition("-")
    try:
        return int(lo), int(hi or lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: expected MIN-MAX, e.g. 2-12") from None


def _kinds() -> list[str]:
    from data_pipelines.kinds import KINDS

    return [*KINDS, "tokenizer"]


def _kinds_described() -> str:
    from data_pipelines.kinds import KINDS

    return (
        "; ".join(f"{name}: {kind.what}" for name, kind in KINDS.items()) + "; tokenizer: the byte-level BPE"
    )


def _experiments() -> list[str]:
    from kimi_lab.experiments import EXPERIMENTS

    return list(EXPERIMENTS)


def _experiments_help() -> str:
    return f"run a multi-stage experiment end to end ({', '.join(_experiments())})"


def _experiments_described() -> str:
    from kimi_lab.experiments import EXPERIMENTS

    return "; ".join(f"{name}: {what}" for name, what in EXPERIMENTS.items())


# Arguments several commands share
OVERRIDES = arg("overrides", nargs="*", help="Hydra overrides, e.g. model=k2")
CHECKPOINT = arg("checkpoint", help="a kimi_lab checkpoint (a run's .ckpt, a sharded folder, import-hf's)")
JSON = arg("--json", action="store_true")


def sampling(temperature: float) -> tuple[Arg, ...]:
    """``generate`` and ``chat``: the checkpoint and how tokens are sampled."""
    return (
        CHECKPOINT,
        arg("--max-new-tokens", type=int, default=256),
        arg("--temperature", type=float, default=temperature, help="0: greedy"),
        arg("--top-p", type=float, default=None, help="nucleus sampling: keep this much probability"),
        arg("--top-k", type=int, default=None, help="sample among the k most likely tokens"),
        arg("--seed", type=int, default=None, help="the same seed, the same sample"),
        arg("--verbose", action="store_true", help="also log diagnostics (loading, experts backend)"),
    )


DATA_BUILD_ARGS = (
    arg("kind", choices=Lazy(_kinds)),
    arg("--out", help="output folder (default: data/<kind>; tokenizer: data/tokenizers/bpe-<V>.json)"),
    arg("--n", type=int, default=None, help="how many samples (text: at most; others: default 200)"),
    arg("--seed", type=int, default=0),
    arg(
        "--src",
        default=None,
        help="text: your .txt/.jsonl/.parquet; image-code: your .svg/.html; captions: an image-code or "
        "page-recordings folder",
    ),
    arg("--vocab-size", type=int, default=8192, help="tokenizer vocabulary size"),
    arg(
        "--shard-mb",
        type=float,
        default=None,
        help="cap on a shard's size (default: 1 for text, 0.25 otherwise)",
    ),
    arg(
        "--families",
        type=_comma_list,
        default=None,
        help="visual-tasks: comma-separated, e.g. count,maze; code-from-pixels: e.g. "
        "html_screenshot,svg_screenshot,html_recording (default: all)",
    ),
    arg(
        "--with-answers",
        action="store_true",
        help="code-from-pixels: each prompt with its code as the assistant's reply (for phase sft)",
    ),
    arg("--modality", choices=("image", "text", "both"), default=None, help="visual-tasks (default image)"),
    arg("--with-visual-traces", action="store_true", help="zero-vision-sft: mix in image trajectories"),
    arg(
        "--visual-fraction",
        type=float,
        default=None,
        help="zero-vision-sft: share of image trajectories (default 0.2)",
    ),
    arg(
        "--fanout-fraction",
        type=float,
        default=None,
        help="swarm-sft: share of delegating (fan-out) demonstrations; the rest are serial (default 0.5)",
    ),
    arg(
        "--overspawn-fraction",
        type=float,
        default=None,
        help="swarm-sft: share of fan-outs that also spawn sub-agents with vague work (default 0)",
    ),
    arg(
        "--kinds",
        type=_comma_list,
        default=None,
        help="swarm-tasks, swarm-sft: comma-separated, wide,deep (default: both)",
    ),
    arg(
        "--val-fraction",
        type=float,
        default=None,
        help="swarm-tasks (default 0.2), swarm-sft, code-from-pixels (default 0.05): share held out in val",
    ),
    arg(
        "--widths",
        dest="width_range",
        type=_width_range,
        default=None,
        help="swarm-tasks (default 3-6), swarm-sft (default 2-12): items per task, MIN-MAX",
    ),
    arg(
        "--slack",
        type=int,
        default=None,
        help="swarm-tasks: critical steps beyond a swarm's fastest path (default 2; more lets one agent "
        "finish narrow tasks)",
    ),
    arg(
        "--actions",
        choices=("index", "text"),
        default=None,
        help="swarm-sft: the orchestrator's action language (default index: items by number)",
    ),
    arg(
        "--tokenizer",
        default=None,
        help="swarm-sft: the tokenizer its turns are measured with (default data/tokenizers/bpe-8192.json)",
    ),
    arg(
        "--max-turn-tokens",
        type=int,
        default=None,
        help="swarm-sft: refuse demonstrations with a longer assistant turn (a generation budget)",
    ),
)

# The commands: name -> Command, or -> a table of sub-commands. Adding a command is one entry.
COMMANDS: dict[str, Command | dict[str, Command]] = {
    # `kimi-lab train` becomes `python -m kimi_lab.train` before any parsing (see main)
    "train": Command(
        None,
        "train with Hydra overrides, e.g. experiment=quickstart",
        (arg("overrides", nargs=argparse.REMAINDER),),
        add_help=False,
    ),
    "params": Command(
        commands.params,
        "count total and active parameters of a model config",
        (OVERRIDES, arg("--json", action="store_true", help='print {"total": ..., "active": ...}')),
    ),
    "plan": Command(
        commands.plan,
        "memory per rank of a run config, and whether it fits an H100 / H200",
        (
            arg(
                "overrides", nargs="*", help="Hydra overrides, e.g. model=k2 trainer=fsdp2 trainer.devices=8"
            ),
            arg("--json", action="store_true", help="the plan as JSON (bytes)"),
        ),
    ),
    "data": {
        "build": Command(
            commands.data_build,
            "build WebDataset shards (or the tokenizer)",
            DATA_BUILD_ARGS,
            Lazy(_kinds_described),
        ),
        "inspect": Command(
            commands.data_inspect,
            "per-shard counts, modalities, sizes, decode failures, previews",
            (
                arg("dir", help="a folder of .tar shards, or one .tar"),
                JSON,
                arg("--previews", type=int, default=3),
            ),
        ),
    },
    "export-hf": Command(
        commands.export_hf,
        "a checkpoint in the released K2 / K2.5 layout (transformers loads it)",
        (
            arg("ckpt", help="a checkpoint file or sharded checkpoint folder"),
            arg("out_dir"),
            arg("--quantize", choices=("int4",), default=None, help="routed experts as K2.5 ships them"),
            arg("--dtype", choices=("float32", "bfloat16"), default="float32", help="unquantized tensors"),
            arg("--shard-gb", type=float, default=4.0, help="cap on a safetensors shard's size"),
        ),
    ),
    "import-hf": Command(
        commands.import_hf,
        "a K2 / K2.5 HF folder (FP8, INT4 or plain) as a sharded checkpoint",
        (
            arg("hf_dir"),
            arg("out_ckpt", nargs="?", help="the sharded checkpoint folder to write (must not exist)"),
            arg("--dtype", choices=("float32", "bfloat16"), default="float32", help="the stored weights"),
            arg("--file-mb", type=int, default=1024, help="output file size; bounds the import's memory"),
            arg("--dry-run", action="store_true", help="print what the import would write and need"),
            arg("--json", action="store_true", help="with --dry-run: the plan as JSON"),
        ),
    ),
    "dashboard": Command(
        commands.dashboard,
        "the Streamlit dashboard of a runs folder (local only by default)",
        (
            arg("runs_dir", nargs="?", default="runs"),
            arg("--port", type=int, default=8501),
            arg(
                "--address",
                default="127.0.0.1",
                help="bind address; 0.0.0.0 exposes the dashboard to the network",
            ),
        ),
    ),
    "report": Command(
        commands.report,
        "markdown + PNG report of an experiment's multirun folder",
        (
            arg("folder", help="the multirun folder; the report is written here"),
            arg(
                "--also",
                nargs="+",
                default=[],
                metavar="FOLDER",
                help="more multiruns of the same experiment to include (e.g. a later seed=1 sweep)",
            ),
        ),
    ),
    "eval": Command(
        commands.eval_tasks,
        "score a checkpoint on task prompts (greedy, with the sandboxed tool)",
        (
            arg("checkpoint"),
            arg(
                "--tasks",
                action="append",
                required=True,
                metavar="NAME=FOLDER",
                help="task shards from kimi-lab data build visual-tasks (repeatable)",
            ),
            arg("--n", type=int, default=32, help="prompts per task folder (its val split)"),
            arg(
                "--batch-size",
                type=int,
                default=64,
                help="episodes decoded side by side (prompts of similar length)",
            ),
            JSON,
            arg("--out", help="also write the JSON result (with per-prompt rewards and transcripts) here"),
        ),
    ),
    "evaluate": Command(
        commands.evaluate,
        "lm-evaluation-harness tasks on a checkpoint (pip install -e '.[eval]')",
        (
            CHECKPOINT,
            arg("--tasks", required=True, help="comma-separated lm-eval task (or group) names"),
            arg("--num-fewshot", type=int, default=None, help="default: each task's own"),
            arg("--limit", type=float, default=None, help="documents per task (a fraction when < 1)"),
            arg("--batch-size", type=int, default=16, help="requests per forward / decode batch"),
            arg("--include-path", default=None, help="a folder of your own task YAMLs (local data)"),
            arg(
                "--output-path",
                default=None,
                help="where lm-eval writes its JSON (default: the run's lm_eval/ folder, or one beside the checkpoint)",
            ),
            arg(
                "--log-samples", action="store_true", help="also write every document's requests and answers"
            ),
            arg("--device", default="cpu", help="cpu, cuda, cuda:1, ..."),
        ),
        "Scores a checkpoint with lm-eval's evaluator; results in lm-eval's JSON format.",
    ),
    "experiment": Command(
        commands.experiment,
        Lazy(_experiments_help),
        (
            arg("name", choices=Lazy(_experiments)),
            arg("--scale", default="small", help="small (the measured run) or tiny (a smoke test)"),
            arg("--out", help="the experiment's folder (default runs/<name>/<time>); rerun to resume"),
            arg("--data-dir", default="data", help="datasets are built here when missing"),
            arg("--seed", type=int, default=0),
        ),
        Lazy(_experiments_described),
    ),
    "swarm": {
        "run": Command(
            commands.swarm_run,
            "play swarm tasks and write traces the dashboard draws",
            (
                arg("--tasks", required=True, help="a folder of kimi-lab data build swarm-tasks"),
                arg(
                    "--policy",
                    default="fanout",
                    help="orchestrator: fanout | single (scripted baselines), ckpt:PATH, openai:URL[#MODEL]",
                ),
                arg("--subagent", default="scripted", help="scripted | ckpt:PATH | openai:URL[#MODEL]"),
                arg("--split", default="val", choices=["train", "val"]),
                arg("--n", type=int, default=1, help="tasks to play (the first N of the split)"),
                arg("--max-critical-steps", type=int, default=0, help="0: each task's own budget"),
                arg("--temperature", type=float, default=0.0, help="for model orchestrators (0: greedy)"),
                arg(
                    "--single-agent", action="store_true", help="no swarm tools: the orchestrator works alone"
                ),
                arg(
                    "--actions",
                    choices=("index", "text"),
                    default="index",
                    help="the orchestrator's action language: items by number (index) or free text",
                ),
                arg("--max-new-tokens", type=int, default=256, help="per turn, for model policies"),
                arg("--out", help="run folder (default runs/swarm/<time>)"),
                JSON,
            ),
        ),
    },
    "consolidate": Command(
        commands.consolidate,
        "a sharded (FSDP2) checkpoint folder as one checkpoint file",
        (arg("checkpoint"), arg("out")),
    ),
    "serve": Command(
        commands.serve,
        "a checkpoint behind an OpenAI-compatible chat-completions endpoint",
        (
            arg("checkpoint"),
            arg("--host", default="127.0.0.1", help="bind address (no authentication: keep it local)"),
            arg("--port", type=int, default=8000),
            arg(
                "--max-batch",
                type=int,
                default=16,
                help="requests decoded together; more wait for a free row",
            ),
        ),
    ),
    "generate": Command(
        commands.generate,
        "continue a prompt, printing tokens as they are sampled",
        (
            *sampling(temperature=0.8),
            arg("--prompt", required=True),
            arg(
                "--image",
                action="append",
                default=[],
                metavar="PATH",
                help="an image before the prompt (-vl models)",
            ),
        ),
    ),
    "chat": Command(
        commands.chat,
        "an interactive chat with a checkpoint (tool calls in the sandbox)",
        (
            *sampling(temperature=0.7),
            arg("--tools", default=None, choices=["python"], help="run the model's python tool calls"),
            arg("--system", default=None, help="the system message (default with --tools: the tool's)"),
            arg("--max-tool-rounds", type=int, default=4, help="tool calls answered per user message"),
        ),
    ),
    # the benchmark parses its own flags (benchmarks/<name>.py)
    "bench": Command(
        commands.bench,
        "benchmarks that print ratios against peers",
        (arg("rest", nargs=argparse.REMAINDER),),
        add_help=False,
    ),
}


def _value(v: Any) -> Any:
    return v.make() if isinstance(v, Lazy) else v


def _add(sub: Any, name: str, entry: Command | dict[str, Command], path: str) -> None:
    if isinstance(entry, dict):  # a group: kimi-lab data build, kimi-lab swarm run
        group = sub.add_parser(name, help=GROUP_HELP[name])
        inner = group.add_subparsers(dest=f"{path}_command", required=True)
        for child, command in entry.items():
            _add(inner, child, command, f"{path}_{child}")
        return
    p = sub.add_parser(
        name, help=_value(entry.help), description=_value(entry.description), add_help=entry.add_help
    )
    for a in entry.args:
        p.add_argument(*a.flags, **{k: _value(v) for k, v in a.options.items()})
    if entry.run is not None:
        p.set_defaults(func=entry.run)


GROUP_HELP = {
    "data": "build and inspect datasets",
    "swarm": "agent swarm episodes (K2.5): scripted, checkpoint or served policies",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kimi-lab", description="Kimi K2.5 research platform")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, entry in COMMANDS.items():
        _add(sub, name, entry, name)
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
