"""Initial weights that do not depend on how the model is laid out over processes.

``kimi-lab train`` builds its model on the meta device (no memory), splits it (expert
parallelism, FSDP2 shards), and only then gives each rank's part its values here
(``materialise_``). Every parameter is drawn in blocks of rows along dim 0, each block
from a generator seeded by (seed, the parameter's name, the block's index); a rank draws
only the blocks its rows touch and keeps the part it holds. So one process, DDP, FSDP2
shards and expert-parallel splits all start from the same weights, and no rank ever makes
a tensor it does not hold (at most one block in flight: about 1M values, or one row).

The distributions are the modules' own: the language model's matrices and embeddings,
the router and the routed experts normal(0, ``init_std``) (K2Model, SigmoidRouter,
Experts), norm gains 1 and biases 0, the vision tower's Linear layers torch's default
(uniform in +-1/sqrt(fan_in)) and its position grid normal(0, 0.02). A parameter no rule
covers is an error, never garbage. Buffers are recomputed (rotary frequencies, the
video time table) or reset (router biases and counts, the attention-logit maxima).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import torch
from torch import nn

from kimi_lab.config.schema import ModelConfig
from kimi_lab.errors import ConfigError
from kimi_lab.model.moe.experts import Experts
from kimi_lab.model.moe.router import SigmoidRouter
from kimi_lab.model.norm import RMSNorm
from kimi_lab.model.rope import RotaryEmbedding, rope_inv_freq
from kimi_lab.model.sharding import local_part
from kimi_lab.model.vision.moonvit import MoonViT3D, VisionRoPE, time_table

BLOCK_VALUES = 1 << 20  # values drawn per block (at least one row)
# Wrappers that add a level to parameter names without changing the model (activation checkpointing).
_WRAPPER_PARTS = ("_checkpoint_wrapped_module.", "_fsdp_wrapped_module.", "_orig_mod.")


@dataclass(frozen=True)
class Rule:
    kind: str  # normal | uniform | ones | zeros
    scale: float = 0.0  # the std (normal) or the bound (uniform)


def canonical_name(name: str) -> str:
    for part in _WRAPPER_PARTS:
        name = name.replace(part, "")
    return name


def init_rules(model: nn.Module, init_std: float) -> dict[str, Rule]:
    """Canonical parameter name -> how its initial values are drawn."""
    rules: dict[str, Rule] = {}
    for mod_name, m in model.named_modules():
        prefix = canonical_name(f"{mod_name}." if mod_name else "")
        in_lm = not prefix.startswith(("vision_tower.", "projector."))
        own = [n for n, _ in m.named_parameters(recurse=False)]
        if isinstance(m, Experts):  # every backend's expert weights, whatever their local names
            for n, _ in m.named_parameters():
                rules[prefix + canonical_name(n)] = Rule("normal", init_std)
            continue
        for n in own:
            key = prefix + n
            if isinstance(m, (RMSNorm, nn.LayerNorm)):
                rules[key] = Rule("ones" if n == "weight" else "zeros")
            elif isinstance(m, (nn.Linear, nn.Embedding, SigmoidRouter)) and in_lm:
                rules[key] = Rule("normal", init_std) if n == "weight" else Rule("zeros")
            elif isinstance(m, nn.Linear):  # torch's default Linear init (kaiming-uniform, a=sqrt(5))
                rules[key] = Rule("uniform", 1 / math.sqrt(m.in_features))
            elif isinstance(m, MoonViT3D) and n == "pos_emb":
                rules[key] = Rule("normal", 0.02)
    return rules


def _seed(seed: int, name: str, block: int) -> int:
    return zlib.crc32(f"{seed}/{name}/{block}".encode())


def _draw(rule: Rule, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    if rule.kind == "ones":
        return torch.ones(shape)
    if rule.kind == "zeros":
        return torch.zeros(shape)
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(shape)
    if rule.kind == "normal":
        return out.normal_(0.0, rule.scale, generator=g)
    return out.uniform_(-rule.scale, rule.scale, generator=g)


@torch.no_grad()
def fill_(
    local: torch.Tensor, whole: tuple[int, ...], offset: tuple[int, ...], name: str, rule: Rule, seed: int
) -> None:
    """Give ``local`` (the box of the whole tensor starting at ``offset``) its values."""
    if rule.kind in ("ones", "zeros"):
        local.fill_(1.0 if rule.kind == "ones" else 0.0)
        return
    if local.numel() == 0:
        return
    row = math.prod(whole[1:])
    rows_per_block = max(1, BLOCK_VALUES // max(row, 1))
    lo, hi = offset[0], offset[0] + local.shape[0]
    for b in range(lo // rows_per_block, (hi - 1) // rows_per_block + 1):
        start, stop = b * rows_per_block, min((b + 1) * rows_per_block, whole[0])
        block = _draw(rule, (stop - start, *whole[1:]), _seed(seed, name, b))
        a, z = max(lo, start), min(hi, stop)
        part = block[a - start : z - start]
        for d in range(1, local.ndim):  # the local box's extent along the other dims
            part = part.narrow(d, offset[d], local.shape[d])
        local[a - lo : z - lo].copy_(part)


def _expert_offset(
    module: nn.Module, whole: tuple[int, ...]
) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """Whole shape and offset of a plain (not DTensor) expert-parallel shard: rows of whole experts."""
    shard = getattr(module, "shard", None)
    if shard is None or whole[0] == shard.n_experts:
        return None
    return (shard.n_experts, *whole[1:]), (shard.first,) + (0,) * (len(whole) - 1)


@torch.no_grad()
def initialise_(model: nn.Module, cfg: ModelConfig, seed: int) -> None:
    """Every parameter's (local part's) initial values, and every buffer's, in place."""
    rules = init_rules(model, cfg.init_std)
    for mod_name, m in model.named_modules():
        for n, p in m.named_parameters(recurse=False):
            name = canonical_name(f"{mod_name}.{n}" if mod_name else n)
            if name not in rules:
                raise ConfigError(f"no initialisation rule for parameter {name} ({type(m).__name__})")
            local, whole, offset = local_part(p)
            if (ep := _expert_offset(_owner(model, mod_name), whole)) is not None:
                whole, offset = ep
            fill_(local, whole, offset, name, rules[name], seed)
    init_buffers_(model, cfg)


def _owner(model: nn.Module, mod_name: str) -> nn.Module:
    """The Experts module a parameter belongs to (its backend may nest it), else its own module."""
    parts = mod_name.split(".") if mod_name else []
    m: nn.Module = model
    owner = model
    for part in parts:
        m = getattr(m, part)
        if isinstance(m, Experts):
            owner = m
    return owner if isinstance(owner, Experts) else m


@torch.no_grad()
def init_buffers_(model: nn.Module, cfg: ModelConfig) -> None:
    """Buffers as the constructors make them (they are config functions or start at zero)."""
    for m in model.modules():
        device = next((b.device for b in m.buffers(recurse=False)), None)
        if device is None:
            continue
        if isinstance(m, RotaryEmbedding):
            m.inv_freq = rope_inv_freq(cfg.attention.qk_rope_head_dim, cfg.attention.rope)[0].to(device)
        elif isinstance(m, VisionRoPE):
            v = cfg.vision
            assert v is not None
            m.inv_freq = VisionRoPE(v.hidden_size // v.n_heads, v.rope_theta).inv_freq.to(device)
        elif isinstance(m, MoonViT3D):
            m.time_emb = time_table(m.cfg.pos_emb_time, m.cfg.hidden_size).to(device)
        elif isinstance(m, SigmoidRouter):
            m.expert_bias.zero_()
            m.tokens_per_expert.zero_()
        if hasattr(m, "max_logit"):
            m.max_logit.fill_(float("-inf"))


def materialise_(model: nn.Module, cfg: ModelConfig, device: torch.device | str, seed: int) -> None:
    """A model built (and possibly sharded) on the meta device: allocate each rank's part on
    ``device`` and initialise it. Nothing beyond the rank's own part is ever allocated."""
    model.to_empty(device=device)
    initialise_(model, cfg, seed)


def is_meta(model: nn.Module) -> bool:
    return any(t.is_meta for t in (*model.parameters(), *model.buffers()))


def expert_rows_as_dtensors(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` (``model.state_dict()``) with each plain expert-parallel shard seen as a DTensor
    of the whole (E, F, D) tensor, sharing its storage: torch.distributed.checkpoint then reads
    (or writes) each rank's own experts' rows. Other entries are returned as they are."""
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.tensor import DTensor, Shard

    out = dict(state)
    for name, m in model.named_modules():
        if not isinstance(m, Experts) or m.shard is None or isinstance(getattr(m, "w1", None), DTensor):
            continue
        mesh = DeviceMesh.from_group(m.shard.group, next(m.parameters()).device.type)
        prefix = canonical_name(f"{name}.")
        for key, t in state.items():
            if key.startswith(prefix) and t.ndim and t.shape[0] == m.shard.n_local:
                out[key] = DTensor.from_local(t, mesh, [Shard(0)], run_check=False)
    return out
