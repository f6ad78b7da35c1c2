"""``kimi-lab evaluate``: a kimi_lab checkpoint on lm-evaluation-harness tasks.

lm-eval's own evaluator, task registry and output format; kimi_lab supplies a model class,
registered with lm-eval as ``kimi_lab``, that loads any checkpoint through
``kimi_lab.decode.loading`` and answers lm-eval's three requests with the project's own pieces:

- ``loglikelihood``: (context, continuation) tokenised as lm-eval's ``hf`` model does
  (``TemplateLM``: trailing spaces of the context go to the continuation, the continuation
  is what encoding the whole adds to the context; end-of-text stands for an empty context),
  truncated from the left to the model's context, scored a batch per forward by
  ``rl.rescore`` (the log-probs RL trains with, here over the whole vocabulary);
- ``loglikelihood_rolling``: lm-eval's rolling windows, scored the same way;
- ``generate_until``: ``generation.generate``, the KV-cached decode path, greedy unless the
  task samples, never sampling what the chat format bans (vision placeholders, padding), a row
  ending at the chat format's stop tokens (the ids an export's ``generation_config.json`` names)
  or at one of its stop strings, the batch once every row has ended.

Results are lm-eval's JSON under ``--output-path`` (``<path>/<checkpoint>/results_<time>.json``,
and ``samples_<task>_<time>.jsonl`` with ``--log-samples``); by default that is the run's
``lm_eval/`` folder, where the dashboard's runs page finds it. lm-eval is optional
(``pip install -e '.[eval]'``) and imported only here, lazily.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from kimi_lab import metrics as M
from kimi_lab.errors import ConfigError

MODEL_NAME = "kimi_lab"  # what lm-eval knows the model class as (``--model kimi_lab``)


def _lm_eval() -> Any:
    try:
        import lm_eval
    except ImportError as exn:
        raise ConfigError(f"kimi-lab evaluate needs lm-eval: pip install -e '.[eval]' ({exn})") from None
    return lm_eval


class Scorer:
    """A loaded checkpoint answering token-level requests (no lm-eval types: testable alone)."""

    def __init__(
        self, checkpoint: str | Path, device: str = "cpu", batch_size: int = 16, progress: bool = True
    ) -> None:
        from kimi_lab.decode.loading import load_model

        if batch_size < 1:
            raise ConfigError(f"--batch-size={batch_size} must be >= 1")
        loaded = load_model(checkpoint, device)
        if loaded.tokenizer is None:
            raise ConfigError(f"{checkpoint}: no tokenizer")
        self.loaded, self.model, self.tok = loaded, loaded.model, loaded.tokenizer
        self.max_length = loaded.config.model.max_seq_len
        self.batch_size = batch_size
        self.progress = progress

    def _bar(self, total: int, what: str) -> Any:
        from tqdm import tqdm

        return tqdm(total=total, desc=f"kimi_lab {what}", disable=not self.progress, file=sys.stderr)

    def loglikelihoods(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """Per (context, continuation) tokens: log p(continuation | context), and whether the
        continuation is what greedy decoding writes. Longest first, ``batch_size`` a forward."""
        from kimi_lab.rl.rescore import ScoredRow, rescore

        order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i][0]) - len(pairs[i][1]))
        out: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
        bar = self._bar(len(pairs), "log-likelihoods")
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            rows = []
            for i in chunk:
                ctx, cont = pairs[i]
                if not cont:
                    raise ValueError("loglikelihood: an empty continuation")
                whole = (ctx + cont)[-(self.max_length + 1) :]
                n = min(len(cont), len(whole) - 1)
                rows.append(
                    ScoredRow(whole, [False] * (len(whole) - n) + [True] * n, [0.0] * len(whole), 0.0)
                )
            with torch.inference_mode():
                sc = rescore(self.model, rows, self.tok.pad_id, ())
            logp, greedy = sc.logp_new.double().cpu(), sc.greedy.cpu()
            at = 0
            for i, row in zip(chunk, rows, strict=True):
                n = sum(row.sampled)
                out[i] = (float(logp[at : at + n].sum()), bool(greedy[at : at + n].all()))
                at += n
            bar.update(len(chunk))
        bar.close()
        return out

    def generate_until(
        self,
        contexts: list[list[int]],
        until: list[str],
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float | None = None,
        top_k: int | None = None,
    ) -> list[str]:
        """Continue each context (left-truncated to leave room) until the chat format's stop
        tokens (what an export's generation_config says) or a stop string; the text without
        special tokens (as transformers decodes it for lm-eval), cut at the first stop string."""
        from kimi_lab.chat_format import ChatEncoder
        from kimi_lab.decode.generation import DecodeOptions, Prompt, Step, generate

        room = self.max_length - max_new_tokens
        if room < 1:
            raise ConfigError(f"max_gen_toks={max_new_tokens} leaves no context in {self.max_length} tokens")
        stops = [s for s in until if s]
        enc = ChatEncoder(self.tok)
        texts: list[str] = []
        bar = self._bar(len(contexts), "generations")
        for start in range(0, len(contexts), self.batch_size):
            batch = [c[-room:] or [self.tok.eos_id] for c in contexts[start : start + self.batch_size]]
            sampled: list[list[int]] = [[] for _ in batch]
            done = [False] * len(batch)

            def on_step(step: Step, sampled: list[list[int]] = sampled, done: list[bool] = done) -> bool:
                for i, t in enumerate(step.tokens):
                    if t is not None and not done[i]:
                        sampled[i].append(t)
                        done[i] = t in enc.stop_ids or any(s in self.text(sampled[i]) for s in stops)
                return all(done)  # every row has ended (stop token or string): no need to go on

            options = DecodeOptions(
                max_new_tokens,
                enc.stop_ids,
                self.tok.pad_id,
                temperature=temperature,
                top_p=top_p,
                top_k=top_k,
                banned_ids=enc.banned_ids,
            )
            gens = generate(self.model, [Prompt(c) for c in batch], options, on_token=on_step)
            for g in gens:
                text = self.text(g.tokens)
                for s in stops:
                    text = text.split(s)[0]
                texts.append(text)
            bar.update(len(batch))
        bar.close()
        return texts

    @functools.cached_property
    def _special_ids(self) -> set[int]:
        from kimi_lab.data.tokenizer import SPECIAL_TOKENS

        ids = set(getattr(self.tok, "specials", {}).values())  # K2's tiktoken file: all 256
        for name in SPECIAL_TOKENS:
            with contextlib.suppress(ConfigError):
                ids.add(self.tok.token_id(name))
        return ids

    def text(self, tokens: list[int]) -> str:
        return self.tok.decode([t for t in tokens if t not in self._special_ids])


@functools.cache
def model_class() -> type:
    """kimi_lab's lm-eval model class, registered as ``kimi_lab`` (lm-eval is imported here)."""
    _lm_eval()
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
    from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    @register_model(MODEL_NAME)
    class KimiLabLM(TemplateLM):
        """lm-eval's view of a kimi_lab checkpoint: ``pretrained`` is its path."""

        def __init__(
            self, pretrained: str, batch_size: int | str = 16, device: str | None = None, **_: Any
        ) -> None:
            super().__init__()
            try:
                size = int(batch_size)
            except ValueError:
                raise ConfigError(f"--batch-size {batch_size!r}: give a number of rows") from None
            self.scorer = Scorer(pretrained, device or "cpu", size)
            self.tok = self.scorer.tok

        @property
        def eot_token_id(self) -> int:
            return self.tok.eos_id

        @property
        def max_length(self) -> int:
            return self.scorer.max_length

        def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kw: Any) -> list[int]:
            return self.tok.encode(string)  # kimi_lab adds no special tokens when encoding

        def tok_decode(self, tokens: list[int], **kw: Any) -> str:
            return self.tok.decode(tokens)  # with special tokens: the end-of-text stop string

        def _loglikelihood_tokens(self, requests: list, disable_tqdm: bool = False, **kw: Any) -> list:
            scores = self.scorer.loglikelihoods([(ctx, cont) for _, ctx, cont in requests])
            for (key, _, _), score in zip(requests, scores, strict=True):
                if key is not None:
                    self.cache_hook.add_partial("loglikelihood", key, score)
            return scores

        def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
            pairs, owner = [], []
            for i, (text,) in enumerate(r.args for r in requests):
                windows = get_rolling_token_windows(
                    token_list=self.tok_encode(text),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length,
                    context_len=1,
                )
                for ctx, cont in map(make_disjoint_window, windows):
                    pairs.append((ctx, cont))
                    owner.append(i)
            totals = [0.0] * len(requests)
            for i, (logp, _) in zip(owner, self.scorer.loglikelihoods(pairs), strict=True):
                totals[i] += logp
            for r, total in zip(requests, totals, strict=True):
                self.cache_hook.add_partial("loglikelihood_rolling", r.args, total)
            return totals

        def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
            groups: dict[str, list[int]] = {}
            for i, r in enumerate(requests):
                groups.setdefault(json.dumps(r.args[1], sort_keys=True, default=str), []).append(i)
            out = [""] * len(requests)
            eos = self.tok_decode([self.eot_token_id])
            for members in groups.values():
                kwargs = normalize_gen_kwargs(dict(requests[members[0]].args[1]), 256)
                until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
                max_new = int(kwargs.pop("max_gen_toks"))
                temperature = float(kwargs.get("temperature") or 0.0) if kwargs.get("do_sample") else 0.0
                texts = self.scorer.generate_until(
                    [self.tok_encode(requests[i].args[0]) for i in members],
                    until,
                    max_new,
                    temperature,
                    kwargs.get("top_p"),
                    kwargs.get("top_k"),
                )
                for i, text in zip(members, texts, strict=True):
                    out[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
            return out

    return KimiLabLM


# ------------------------------------------------------------------------- command
def default_output(checkpoint: Path) -> Path:
    """The run's ``lm_eval/`` folder when the checkpoint sits in ``<run>/checkpoints/``, else one
    beside the checkpoint."""
    for parent in checkpoint.resolve().parents:
        if parent.name == M.CHECKPOINT_DIR:
            return parent.parent / M.HARNESS_DIR
    return checkpoint.resolve().parent / M.HARNESS_DIR


def evaluate(
    checkpoint: str | Path,
    tasks: list[str],
    num_fewshot: int | None = None,
    limit: float | None = None,
    batch_size: int = 16,
    include_path: str | None = None,
    output_path: str | Path | None = None,
    log_samples: bool = False,
    device: str = "cpu",
) -> tuple[dict[str, Any], Path]:
    """Run lm-eval's evaluator on ``checkpoint``; (its results, the results file it wrote)."""
    from kimi_lab.decode.loading import read_config

    checkpoint = Path(checkpoint)
    read_config(checkpoint)  # a bad checkpoint is a one-line error before lm-eval starts
    if include_path is not None and not Path(include_path).is_dir():
        raise ConfigError(f"--include-path {include_path}: no such folder")
    _lm_eval()
    from lm_eval import simple_evaluate
    from lm_eval.loggers import EvaluationTracker
    from lm_eval.tasks import TaskManager

    # Indexing lm-eval's own thousands of task files takes a while: not when the local
    # folder has every task asked for.
    manager = None
    if include_path is not None:
        manager = TaskManager(include_path=include_path, include_defaults=False)
        if not all(manager.match_tasks([t]) for t in tasks):
            manager = None
    manager = manager or TaskManager(include_path=include_path)
    missing = [t for t in tasks if not manager.match_tasks([t])]
    if missing:
        raise ConfigError(f"lm-eval has no task {', '.join(missing)} (local tasks: --include-path FOLDER)")
    model_class()
    out = Path(output_path) if output_path is not None else default_output(checkpoint)
    tracker = EvaluationTracker(output_path=str(out))
    results = simple_evaluate(
        model=MODEL_NAME,
        model_args={"pretrained": str(checkpoint)},
        tasks=tasks,
        batch_size=batch_size,
        device=device,
        num_fewshot=num_fewshot,
        limit=limit,
        log_samples=log_samples,
        evaluation_tracker=tracker,
        task_manager=manager,
    )
    if results is None:
        raise ConfigError("lm-eval returned no results")
    samples = results.pop("samples", None)
    started = time.time()
    tracker.save_results_aggregated(results=results, samples=samples if log_samples else None)
    if log_samples and samples is not None:
        for task in results["configs"]:
            tracker.save_results_samples(task_name=task, samples=samples[task])
    written = [p for p in out.rglob(M.HARNESS_RESULTS_GLOB) if p.stat().st_mtime >= started - 1]
    if not written:  # lm-eval logs a failed write as a warning and goes on
        raise ConfigError(f"lm-eval could not write its results under {out}")
    return results, max(written, key=lambda p: p.stat().st_mtime)


def task_lines(results: dict[str, Any]) -> list[str]:
    """One line per task: its metrics (with standard errors) and how many documents were scored."""
    lines = []
    for task, metrics in results.get("results", {}).items():
        parts = []
        for key, value in metrics.items():
            name, _, flt = key.partition(",")
            if (
                name in ("alias", "sample_len")
                or name.endswith("_stderr")
                or not isinstance(value, int | float)
            ):
                continue
            stderr = metrics.get(f"{name}_stderr,{flt}")
            err = f" ± {stderr:.4f}" if isinstance(stderr, int | float) else ""
            parts.append(f"{name}{'' if flt in ('', 'none') else f' ({flt})'} {value:.4f}{err}")
        n = (results.get("n-samples") or {}).get(task, {}).get("effective")
        lines.append(f"{task}: {', '.join(parts) or 'no metrics'}" + (f" (n={n})" if n is not None else ""))
    return lines


def evaluate_command(args: Any) -> None:
    tasks = [t for t in args.tasks.split(",") if t]
    if not tasks:
        raise ConfigError("--tasks: name at least one lm-eval task")
    results, path = evaluate(
        args.checkpoint,
        tasks,
        num_fewshot=args.num_fewshot,
        limit=args.limit,
        batch_size=args.batch_size,
        include_path=args.include_path,
        output_path=args.output_path,
        log_samples=args.log_samples,
        device=args.device,
    )
    for line in task_lines(results):
        print(line)
    print(f"results: {path}", file=sys.stderr)
