"""``kimi-lab data build swarm-sft``: orchestrator conversations from the scripted swarm baselines.

PARL trains an orchestrator by reinforcement; a small model must first be able to
write the swarm's tool calls at all. This builder plays search tasks with the
scripted policies through the real runtime (``kimi_lab.swarm.play``) and keeps the
orchestrator's side of each episode as a chat sample for phase ``sft``, in three styles:

- ``fanout``: a sub-agent per sub-task, all assigned in one stage, results combined;
- ``overspawn``: the same, plus as many extra sub-agents given vague work (no item:
  the whole task) that never returns a result (spurious parallelism);
- ``serial``: every look-up by the orchestrator itself (``solve`` in the index language;
  no step budget, so it finishes).

The mixture (``fanout_fraction``, ``overspawn_fraction``, the rest serial) is the prior
PARL reshapes. Demonstrations are written in one action language (``actions``, see
``kimi_lab.swarm.actions``), over widths ``width_range`` (default 2-12: every item
number a held-out task may hold is seen).

Each assistant turn is measured in tokens of the training tokenizer (``tokenizer``);
the manifest records the longest per width (``turn_tokens``) and the longest whole
conversation, which is what a generation budget and ``data.seq_len`` must hold, and
``max_turn_tokens`` refuses a demonstration set with a longer turn (a sampled turn that
long would be cut, ending its episode with score 0).

The demonstrations come from a corpus of their own (``seed + DEMO_CORPUS_OFFSET``,
``n_companies`` large), so their entity names are shared with no task PARL trains or is
evaluated on.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from data_pipelines.common import ShardSink
from kimi_lab.chat_format import ChatEncoder
from kimi_lab.config.swarm import SwarmConfig
from kimi_lab.data.schema import make_record, sample_key
from kimi_lab.errors import DataError
from kimi_lab.swarm.corpus import build_corpus
from kimi_lab.swarm.environment import SearchEnvironment
from kimi_lab.swarm.play import play
from kimi_lab.swarm.scripted import FanOutPolicy, ScriptedSubagent, SingleAgentPolicy
from kimi_lab.swarm.search_tasks import TASK_KINDS, generate_tasks, score_swarm
from kimi_lab.swarm.types import Policy, SwarmTask

DEMO_CORPUS_OFFSET = 1_000_003  # the demonstrations' corpus seed, away from any task corpus's
DEFAULT_TOKENIZER = "data/tokenizers/bpe-8192.json"  # the small models' (data.tokenizer)

BUILDER_VERSION = "swarm-sft/4"  # /4: action languages, widths 2-12, measured turns


def _style(u: float, fanout_fraction: float, overspawn_fraction: float) -> str:
    if u < fanout_fraction:
        return "fanout"
    return "overspawn" if u < fanout_fraction + overspawn_fraction else "serial"


def build_swarm_sft(
    out: str | Path,
    n: int = 400,
    seed: int = 0,
    fanout_fraction: float = 0.5,
    overspawn_fraction: float = 0.0,
    val_fraction: float = 0.05,
    kinds: tuple[str, ...] = TASK_KINDS,
    width_range: tuple[int, int] = (2, 12),
    n_companies: int = 400,
    shard_bytes: int = 1_000_000,
    actions: str = "index",
    tokenizer: str | Path = DEFAULT_TOKENIZER,
    max_turn_tokens: int | None = None,
    vocab_size: int = 8192,
) -> dict[str, Any]:
    from kimi_lab.data.tokenizer import load_or_train, open_tokenizer

    for flag, v in (("--fanout-fraction", fanout_fraction), ("--overspawn-fraction", overspawn_fraction)):
        if not 0.0 <= v <= 1.0:
            raise DataError(f"{flag} {v}: expected a number in [0, 1]")
    if fanout_fraction + overspawn_fraction > 1.0:
        raise DataError(
            f"--fanout-fraction {fanout_fraction} + --overspawn-fraction {overspawn_fraction} exceed 1"
        )
    if n < 1:
        raise DataError(f"swarm-sft: --n {n} must be >= 1")
    try:
        cfg = SwarmConfig(
            actions=actions, max_critical_steps=10_000, max_orchestrator_steps=10_000, max_subagent_steps=6
        )
    except ValueError as exn:
        raise DataError(f"swarm-sft: {exn}") from None
    # an existing tokenizer as it is; a missing one is trained (at ``vocab_size``) as training would
    tok = open_tokenizer(tokenizer) if Path(tokenizer).exists() else load_or_train(tokenizer, vocab_size)
    enc = ChatEncoder(tok)
    corpus = build_corpus(seed + DEMO_CORPUS_OFFSET, n_companies=n_companies)
    try:
        tasks = generate_tasks(n, seed + 7_919, kinds, width_range, corpus, "train")
    except ValueError as exn:
        raise DataError(f"swarm-sft: {exn}") from None
    rng = random.Random(seed)
    styles = {t.id: _style(rng.random(), fanout_fraction, overspawn_fraction) for t in tasks}

    def orchestrator(task: SwarmTask) -> Policy:
        if styles[task.id] == "serial":
            return SingleAgentPolicy(task)
        return FanOutPolicy(task, extra=task.width if styles[task.id] == "overspawn" else 0, interleave=True)

    results = play(tasks, SearchEnvironment(corpus), orchestrator, ScriptedSubagent, cfg)
    sink = ShardSink(out, val_fraction, shard_bytes)
    turn_tokens: dict[int, int] = {}
    longest = 0
    try:
        for i, (task, res) in enumerate(zip(tasks, results, strict=True)):
            style = styles[task.id]
            if res.failure or score_swarm(task, res.answer_text) < 1.0:
                sink.count("failed")  # a demonstration must be right
                continue
            # a turn's sampled tokens: its body and <|im_end|> (the header is the generation prompt)
            turns = [len(enc.encode([m]).tokens) - 2 for m in res.messages if m.role == "assistant"]
            turn_tokens[task.width] = max(turn_tokens.get(task.width, 0), *turns)
            if max_turn_tokens is not None and max(turns) > max_turn_tokens:
                raise DataError(
                    f"swarm-sft: a {style} demonstration of width {task.width} has a turn of {max(turns)} "
                    f"tokens, over --max-turn-tokens {max_turn_tokens}: a sampled turn that long would be cut"
                )
            longest = max(longest, len(enc.encode(res.messages).tokens) + 1)  # and its <|endoftext|>
            record = make_record("chat", f"swarm-sft-{style}", generator=BUILDER_VERSION, seed=seed, index=i)
            record["messages"] = [m.to_dict() for m in res.messages]
            record["swarm"] = {
                "task": task.id,
                "style": style,
                "width": task.width,
                "critical_steps": res.critical_steps,
                "actions": actions,
            }
            content = json.dumps(record, sort_keys=True).encode()
            sink.write({"__key__": sample_key(f"swarm-sft-{style}", content), "json": content})
            sink.count(style)
    finally:
        manifest = sink.close(
            "swarm-sft",
            "chat",
            seed,
            BUILDER_VERSION,
            fanout_fraction=fanout_fraction,
            overspawn_fraction=overspawn_fraction,
            corpus_seed=seed + DEMO_CORPUS_OFFSET,
            n_companies=n_companies,
            kinds=list(kinds),
            width_range=list(width_range),
            actions=actions,
            tokenizer=str(tokenizer),
            # the longest assistant turn per width, and the longest conversation, in tokens
            turn_tokens={str(w): t for w, t in sorted(turn_tokens.items())},
            conversation_tokens=longest,
        )
    return manifest
