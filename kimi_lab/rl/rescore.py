"""Re-scoring sampled tokens under the current policy, for the policy-gradient loss.

Phase ``rl`` scores whole episodes (prompt, sampled turns and tool observations in one
row); phase ``parl`` scores each orchestrator turn in the context it was sampled in.
Both reduce to rows of tokens with a per-token "sampled" flag, the sampler's log-probs
and one advantage per row (``turn_rows`` folds an agent's turns into as few rows as
its contexts allow): one forward pass over the padded rows, then log pi of the
sampled tokens only (the LM head runs on those positions alone). ``kimi-lab evaluate``
scores lm-eval's continuations the same way (``kimi_lab.serving.harness``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from kimi_lab.decode.generation import policy_logprobs


@dataclass
class ScoredRow:
    tokens: list[int]
    sampled: list[bool]  # which tokens the policy drew (only these enter the loss)
    old_logprobs: list[float]  # the sampler's log-prob of each token (ignored where not sampled)
    advantage: float


def turn_rows(turns: list[tuple[list[int], list[int], list[float]]], advantage: float) -> list[ScoredRow]:
    """One agent's turns (context, sampled tokens, their log-probs) as few rows as possible.

    A turn whose context begins with the previous row (the previous context plus what was
    sampled) extends that row: causal attention scores its tokens exactly as a row of its
    own would, at a fraction of the tokens. A context that was re-encoded differently
    (re-tokenised text, a rewritten malformed call, a truncated history) starts a new row.
    """
    rows: list[ScoredRow] = []
    for prompt, toks, logps in turns:
        if not toks or not prompt:
            continue
        last = rows[-1] if rows else None
        if last is not None and prompt[: len(last.tokens)] == last.tokens:
            new = prompt[len(last.tokens) :]
            last.tokens += new + toks
            last.sampled += [False] * len(new) + [True] * len(toks)
            last.old_logprobs += [0.0] * len(new) + list(logps)
        else:
            rows.append(
                ScoredRow(
                    list(prompt) + list(toks),
                    [False] * len(prompt) + [True] * len(toks),
                    [0.0] * len(prompt) + list(logps),
                    advantage,
                )
            )
    return rows


@dataclass
class Rescored:
    logp_new: torch.Tensor  # (N,) with grad, one per sampled token
    logp_old: torch.Tensor  # (N,)
    advantages: torch.Tensor  # (N,) each token's row advantage
    aux_loss: torch.Tensor  # the forward's router losses
    n_tokens: int  # real (non-pad) tokens in the forward
    greedy: torch.Tensor  # (N,) bool: the token is the most likely one (lm-eval's is_greedy)


def rescore(
    model: Any,
    rows: list[ScoredRow],
    pad_id: int,
    banned_ids: tuple[int, ...],
    vision: dict[str, torch.Tensor] | None = None,
) -> Rescored:
    """log pi (with grad) of every sampled token of ``rows``, under the distribution the
    sampler drew from (``banned_ids`` excluded); ``vision`` holds the rows' image inputs."""
    device = next(model.parameters()).device
    if not rows:
        empty = torch.zeros(0, device=device)
        return Rescored(empty, empty, empty, torch.zeros((), device=device), 0, empty.bool())
    for r in rows:
        if not len(r.tokens) == len(r.sampled) == len(r.old_logprobs):
            raise ValueError("rescore: tokens, sampled and old_logprobs differ in length")
    B, T = len(rows), max(len(r.tokens) for r in rows)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    mask = torch.zeros(B, T, dtype=torch.long)
    sampled = torch.zeros(B, T, dtype=torch.bool)
    old = torch.zeros(B, T)
    for i, r in enumerate(rows):
        n = len(r.tokens)
        ids[i, :n] = torch.tensor(r.tokens)
        mask[i, :n] = 1
        sampled[i, :n] = torch.tensor(r.sampled)
        old[i, :n] = torch.tensor(r.old_logprobs)
    adv = torch.tensor([r.advantage for r in rows])
    out = model(
        ids[:, :-1].to(device),
        attention_mask=mask[:, :-1].to(device),
        compute_logits=False,
        **{k: v.to(device) for k, v in (vision or {}).items()},
    )
    # The hidden state at t predicts token t + 1: score only the sampled tokens.
    target = sampled[:, 1:].to(device)
    logits = model.language_model.lm_head(out.hidden[target])
    tokens = ids[:, 1:].to(device)[target]
    logp_all = policy_logprobs(logits, banned_ids)
    logp_new = logp_all.gather(1, tokens[:, None]).squeeze(1)
    return Rescored(
        logp_new,
        old[:, 1:].to(device)[target],
        adv.to(device)[:, None].expand(B, T - 1)[target],
        out.aux_loss,
        int(mask.sum()),
        logp_all.detach().argmax(-1) == tokens,
    )
