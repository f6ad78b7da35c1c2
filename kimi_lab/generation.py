"""Sampling from a KimiK25 with a KV cache: a batch of prompts (text, images) -> continuations.

Prompts of different lengths are left-padded into one batch (positions count real
tokens only, the attention mask hides padding); the prompt is encoded once, then
each new token costs one cached step. Every sampled token's log-probability under
the model (temperature 1, before any top-k) is returned with it: the sampling
policy's ``log pi_old`` that RL's importance mask compares against.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from kimi_lab.data.vision import VisionBlock


@dataclass
class Prompt:
    tokens: list[int]
    blocks: list[VisionBlock] = field(default_factory=list)  # in the order of their placeholder runs


@dataclass
class Generation:
    tokens: list[int]  # sampled tokens, the stop token included when one was hit
    logprobs: list[float]  # log pi(token | prefix) of each, temperature 1
    finished: bool  # stopped on a stop token (False: ran out of max_new_tokens)


def vision_inputs(blocks: list[VisionBlock]) -> dict[str, torch.Tensor]:
    """The model's vision arguments for these blocks, in order (images and video chunks apart)."""
    images = [b for b in blocks if b.kind == "image"]
    videos = [b for b in blocks if b.kind == "video"]
    out: dict[str, torch.Tensor] = {}
    if images:
        out["pixel_values"] = torch.cat([b.pixel_values for b in images])
        out["image_grid_thw"] = torch.tensor([b.grid_thw for b in images], dtype=torch.long)
    if videos:
        out["pixel_values_videos"] = torch.cat([b.pixel_values for b in videos])
        out["video_grid_thw"] = torch.tensor([b.grid_thw for b in videos], dtype=torch.long)
    return out


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    prompts: list[Prompt],
    max_new_tokens: int,
    stop_ids: tuple[int, ...],
    pad_id: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    autocast: torch.dtype | None = None,
    banned_ids: tuple[int, ...] = (),
    top_p: float | None = None,
    on_step: Callable[[list[int | None]], bool | None] | None = None,
) -> list[Generation]:
    """Sample a continuation of every prompt (greedy when ``temperature == 0``).

    ``banned_ids`` are never sampled (vision placeholders, padding): the distribution is
    renormalised over the rest, and the log-probabilities returned are of that distribution.
    ``top_p`` (nucleus sampling) keeps the smallest set of tokens whose probability reaches it.
    ``on_step``, when given, receives each step's sampled token per row as it is sampled (None
    for rows already finished), for streaming; returning True stops generation there (e.g. the
    client went away), leaving the unfinished rows ``finished=False``.
    """
    if not prompts:
        return []
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"generate: top_p={top_p} must be in (0, 1]")
    if any(not p.tokens for p in prompts):
        raise ValueError("generate: every prompt needs at least one token")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    B, L = len(prompts), max(len(p.tokens) for p in prompts)
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    mask = torch.zeros(B, L, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, L - len(p.tokens) :] = torch.tensor(p.tokens)
        mask[i, L - len(p.tokens) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    vision = {k: v.to(device) for k, v in vision_inputs([b for p in prompts for b in p.blocks]).items()}
    cache = model.language_model.new_cache()
    ctx = torch.autocast(device.type, dtype=autocast) if autocast else contextlib.nullcontext()
    stops = torch.tensor(stop_ids, device=device)
    out_tokens = [[] for _ in range(B)]
    out_logp: list[list[float]] = [[] for _ in range(B)]
    done = torch.zeros(B, dtype=torch.bool, device=device)
    try:
        with ctx:
            logits = model(ids, attention_mask=mask, positions=positions, cache=cache, **vision).logits[:, -1]
            next_pos = positions[:, -1] + 1
            for _ in range(max_new_tokens):
                logp = policy_logprobs(logits, banned_ids)
                tok = _sample(logp, temperature, top_k, generator, top_p)
                tok = torch.where(done, torch.full_like(tok, pad_id), tok)
                chosen = logp.gather(1, tok[:, None]).squeeze(1)
                for i in torch.nonzero(~done).flatten().tolist():
                    out_tokens[i].append(int(tok[i]))
                    out_logp[i].append(float(chosen[i]))
                if on_step is not None:
                    stepped = [
                        None if d else int(t) for d, t in zip(done.tolist(), tok.tolist(), strict=True)
                    ]
                    if on_step(stepped):
                        break
                done |= torch.isin(tok, stops)
                if bool(done.all()):
                    break
                # Finished rows keep feeding padding, which only they themselves attend to.
                mask = torch.cat((mask, torch.ones_like(mask[:, :1])), dim=1)
                logits = model(
                    tok[:, None], attention_mask=mask, positions=next_pos[:, None], cache=cache
                ).logits[:, -1]
                next_pos = next_pos + 1
    finally:
        model.train(was_training)
    return [
        Generation(t, lp, bool(t) and t[-1] in stop_ids) for t, lp in zip(out_tokens, out_logp, strict=True)
    ]


def policy_logprobs(logits: torch.Tensor, banned_ids: tuple[int, ...] = ()) -> torch.Tensor:
    """log-softmax over the vocabulary without ``banned_ids`` (fp32)."""
    logits = logits.float()
    if banned_ids:
        logits = logits.index_fill(-1, torch.tensor(banned_ids, device=logits.device), float("-inf"))
    return torch.log_softmax(logits, dim=-1)


def _sample(
    logp: torch.Tensor,
    temperature: float,
    top_k: int | None,
    generator: torch.Generator | None,
    top_p: float | None = None,
) -> torch.Tensor:
    """One token per row: greedy at temperature 0, else from the tempered distribution
    restricted to the ``top_k`` most likely tokens, then to the top-``top_p`` nucleus."""
    if temperature == 0:
        return logp.argmax(-1)
    scores = logp / temperature
    if top_k is not None and top_k < scores.shape[-1]:
        kth = scores.topk(top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if top_p is not None and top_p < 1:
        # Drop a token when the more likely tokens before it already reach top_p (the most
        # likely token always stays), then renormalise what is left.
        sorted_p, order = probs.sort(dim=-1, descending=True)
        outside = (sorted_p.cumsum(-1) - sorted_p) >= top_p
        probs = probs.scatter(-1, order, sorted_p.masked_fill(outside, 0.0))
        probs = probs / probs.sum(-1, keepdim=True)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)
