"""Sampling from a KimiK25 with a KV cache: a batch of prompts (text, images) -> continuations.

The one decode path of kimi_lab: RL and PARL rollouts, evaluation (``kimi-lab eval``,
lm-eval's generation tasks), swarm checkpoint policies and ``kimi-lab serve`` all sample
here; the server's continuous batching (``kimi_lab.serving.batching``) runs the same ``prefill``
and ``decode_step`` with requests joining and leaving between steps. Prompts of different lengths are
left-padded into one batch (positions count real tokens only, the attention mask hides
padding); identical prompts are encoded once. The prompt fills MLA's latent cache
(``kimi_lab.model.kv_cache``), then each new token costs one cached step with the
up-projections absorbed and the few-token experts path; rows that stop leave the batch.
Nothing inside a step waits for the device: tokens reach the host once at the end
(``generate``) or once per step when asked to (``on_token``, ``generate_stream``).

Every sampled token's log-probability under the model (temperature 1, before any
top-k) is returned with it: the sampling policy's ``log pi_old`` that RL's importance
mask compares against.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from kimi_lab.data.vision import VisionBlock
from kimi_lab.model.kv_cache import LatentCache


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


@dataclass
class Step:
    """What one decode step sampled, per batch row (in prompt order); None for rows already stopped."""

    tokens: list[int | None]
    logprobs: list[float | None]


@dataclass(frozen=True)
class DecodeOptions:
    """How ``generate`` samples: the token budget and the stop tokens, the distribution
    (greedy when ``temperature == 0``; ``top_k``; ``top_p``, nucleus sampling: the smallest set of
    most likely tokens whose probability reaches it), and the tokens never sampled (``banned_ids``:
    vision placeholders, padding; the distribution is renormalised over the rest, and the
    log-probabilities returned are of that distribution). A chat model's ``stop_ids`` and
    ``banned_ids`` are its ``ChatEncoder``'s."""

    max_new_tokens: int
    stop_ids: tuple[int, ...]
    pad_id: int
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    generator: torch.Generator | None = None
    autocast: torch.dtype | None = None
    banned_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"generate: top_p={self.top_p} must be in (0, 1]")


def generate(
    model: torch.nn.Module,
    prompts: list[Prompt],
    options: DecodeOptions,
    on_token: Callable[[Step], bool | None] | None = None,
) -> list[Generation]:
    """Sample a continuation of every prompt, as ``options`` say.

    ``on_token``, when given, is called after every decode step with what it sampled
    (``Step``); that reads the step's tokens on the host, which ``generate`` otherwise does
    once at the end. Returning True from it stops generation there (a client went away),
    leaving the unfinished rows ``finished=False``. ``generate_stream`` is the same as an
    iterator.
    """
    steps: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    with contextlib.closing(_decode(model, prompts, options)) as decoded:
        for tok_B, logp_B, alive_B in decoded:
            steps.append((tok_B, logp_B, alive_B))
            if on_token is not None and on_token(_host_step(tok_B, logp_B, alive_B)):
                break
    if not prompts:
        return []
    if not steps:
        return [Generation([], [], False) for _ in prompts]
    # One transfer for the whole generation: (B, steps) tokens, log-probs and liveness.
    tok_BN, logp_BN, alive_BN = (torch.stack(x, dim=1).cpu() for x in zip(*steps, strict=True))
    n_B = alive_BN.sum(1).tolist()
    out = []
    for toks, lps, n in zip(tok_BN.tolist(), logp_BN.tolist(), n_B, strict=True):
        t = toks[:n]
        out.append(Generation(t, lps[:n], bool(t) and t[-1] in options.stop_ids))
    return out


def generate_stream(model: torch.nn.Module, prompts: list[Prompt], options: DecodeOptions) -> Iterator[Step]:
    """``generate`` as an iterator: one ``Step`` per decode step, as soon as it is sampled.

    Row i's tokens are the non-None ``step.tokens[i]`` in order; a row stops after its stop
    token (which is yielded) and the iteration ends when every row has stopped or after
    ``max_new_tokens`` steps. Stopping the iteration early (``break``) frees the cache and
    restores the model's training mode. Same options and sampling as ``generate``.
    """
    for tok_B, logp_B, alive_B in _decode(model, prompts, options):
        yield _host_step(tok_B, logp_B, alive_B)


def _host_step(tok_B: torch.Tensor, logp_B: torch.Tensor, alive_B: torch.Tensor) -> Step:
    alive = alive_B.tolist()
    toks, lps = tok_B.tolist(), logp_B.tolist()
    return Step(
        [t if a else None for t, a in zip(toks, alive, strict=True)],
        [lp if a else None for lp, a in zip(lps, alive, strict=True)],
    )


# How many decode steps run between two checks that every row has stopped. A check reads a
# flag on the host: free on CPU, a pipeline stall on an accelerator, where a few extra steps
# after the last row stops cost less.
_STOP_CHECK_EVERY = {"cpu": 1}
_STOP_CHECK_DEFAULT = 8
# At a stop check, rows that stopped leave the batch once at most this share of it is still running.
_SHRINK_BELOW = 0.75


def _decode(
    model: torch.nn.Module, prompts: list[Prompt], o: DecodeOptions
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per decode step, device tensors (B,): the sampled tokens, their log-probs, and which
    rows were still running (a row's stop token is its last live one). No host sync inside."""
    max_new_tokens, pad_id, autocast = o.max_new_tokens, o.pad_id, o.autocast
    if not prompts or max_new_tokens <= 0:
        return
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    B = len(prompts)
    lm = model.language_model
    banned = banned_mask(lm.cfg.vocab_size, o.banned_ids, device)
    stops = torch.tensor(o.stop_ids, dtype=torch.long, device=device)
    check_every = _STOP_CHECK_EVERY.get(device.type, _STOP_CHECK_DEFAULT)
    # The batch shrinks as rows stop: ``live`` holds the original row of every row still
    # decoded, and rows that stopped are dropped from the cache at the next stop check.
    live = torch.arange(B, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    try:
        logits, pos, cache = prefill(model, prompts, max_new_tokens, pad_id, autocast)
        for step in range(max_new_tokens):
            with torch.inference_mode():
                logp = step_logprobs(logits, banned)
                sampled = sample_tokens(logp, o.temperature, o.top_k, o.generator, o.top_p)
                tok = torch.where(done, pad_id, sampled)
                chosen = logp.gather(1, tok[:, None]).squeeze(1)
                alive = ~done
                done = done | torch.isin(tok, stops)
                out = (tok, chosen, alive)
                if live.numel() < B:  # back to the full batch for the caller
                    out = (
                        torch.full((B,), pad_id, dtype=torch.long, device=device).index_copy_(0, live, tok),
                        torch.zeros(B, device=device).index_copy_(0, live, chosen),
                        torch.zeros(B, dtype=torch.bool, device=device).index_copy_(0, live, alive),
                    )
            yield out
            if step == max_new_tokens - 1:
                break
            if (step + 1) % check_every == 0:
                n_live = int((~done).sum())
                if n_live == 0:
                    break
                if n_live <= _SHRINK_BELOW * live.numel():
                    keep = torch.nonzero(~done).squeeze(1)
                    cache.select(keep)
                    live, tok, pos, done = live[keep], tok[keep], pos[keep], done[keep]
            # Stopped rows not dropped yet keep feeding padding, which only they themselves attend to.
            logits = decode_step(lm, tok, pos, cache, autocast)
            pos = pos + 1
    finally:
        model.train(was_training)


def prefill(
    model: torch.nn.Module,
    prompts: list[Prompt],
    room: int,
    pad_id: int,
    autocast: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor, LatentCache]:
    """Encode ``prompts`` (left-padded into one batch, images through the vision tower) into a
    new cache with ``room`` free slots per row after them.

    Returns the logits of each prompt's next token (B, V), each row's next position (B, 1)
    and the cache. Identical prompts (RL's K samples of one task) are encoded once and their
    cache rows copied, so each row still samples on its own. The batched server prefills
    its newcomers here too, then stacks their cache onto the running batch's.
    """
    if any(not p.tokens for p in prompts):
        raise ValueError("generate: every prompt needs at least one token")
    device = next(model.parameters()).device
    unique, row_of = _unique_prompts(prompts)
    L = max(len(p.tokens) for p in unique)
    ids = torch.full((len(unique), L), pad_id, dtype=torch.long)
    mask = torch.zeros(len(unique), L, dtype=torch.long)
    for i, p in enumerate(unique):
        ids[i, L - len(p.tokens) :] = torch.tensor(p.tokens)
        mask[i, L - len(p.tokens) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    vision = {k: v.to(device) for k, v in vision_inputs([b for p in unique for b in p.blocks]).items()}
    cache = model.language_model.new_cache(L + room)
    with torch.inference_mode(), _autocast(device, autocast):
        logits = model(
            ids, attention_mask=mask, positions=positions, cache=cache, logits_to_keep=1, **vision
        ).logits[:, -1]
    pos = positions[:, -1:] + 1
    if len(unique) < len(prompts):
        rows = torch.tensor(row_of, device=device)
        cache.select(rows)
        logits, pos = logits[rows], pos[rows]
    return logits, pos, cache


def decode_step(
    lm: torch.nn.Module,
    tok_B: torch.Tensor,
    pos_B1: torch.Tensor,
    cache: LatentCache,
    autocast: torch.dtype | None = None,
) -> torch.Tensor:
    """One cached step: every row's last token in, the logits of its next token out (B, V)."""
    # The grad and autocast modes are entered around each forward, never across a caller's
    # code, so what runs between steps keeps its own modes.
    with torch.inference_mode(), _autocast(tok_B.device, autocast):
        return lm(input_ids=tok_B[:, None], positions=pos_B1, cache=cache, logits_to_keep=1).logits[:, -1]


def banned_mask(vocab_size: int, banned_ids: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """(V,) True at the tokens never sampled."""
    banned = torch.zeros(vocab_size, dtype=torch.bool, device=device)
    if banned_ids:
        banned[torch.tensor(banned_ids, device=device)] = True
    return banned


def step_logprobs(logits_BV: torch.Tensor, banned_V: torch.Tensor) -> torch.Tensor:
    """The sampling distribution of a step (fp32 log-probs, temperature 1, banned tokens at -inf)."""
    return torch.log_softmax(logits_BV.float().masked_fill(banned_V, float("-inf")), dim=-1)


def _unique_prompts(prompts: list[Prompt]) -> tuple[list[Prompt], list[int]]:
    """(the distinct prompts in first-seen order, the index in them of every prompt).

    Prompts are the same when their tokens and every vision block's kind, grid and pixels are.
    """
    first: dict[tuple, int] = {}
    unique: list[Prompt] = []
    row_of = []
    for p in prompts:
        key = (
            tuple(p.tokens),
            tuple(
                (b.kind, b.grid_thw, b.pixel_values.contiguous().cpu().numpy().tobytes()) for b in p.blocks
            ),
        )
        if key not in first:
            first[key] = len(unique)
            unique.append(p)
        row_of.append(first[key])
    return unique, row_of


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()


def policy_logprobs(logits: torch.Tensor, banned_ids: tuple[int, ...] = ()) -> torch.Tensor:
    """log-softmax over the vocabulary without ``banned_ids`` (fp32)."""
    logits = logits.float()
    if banned_ids:
        logits = logits.index_fill(-1, torch.tensor(banned_ids, device=logits.device), float("-inf"))
    return torch.log_softmax(logits, dim=-1)


def sample_tokens(
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
