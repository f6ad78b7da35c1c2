"""Expert parallelism composed with data parallelism on a 2-D device mesh.

The mesh is ``(expert_data_parallel, expert_parallel)`` over all ranks, EP
innermost (neighbouring ranks, one node on a cluster). Every rank reads its own
data (data parallel over the whole mesh). Non-expert parameters are replicated
and averaged over all ranks by DDP; each MoE layer's routed experts are split
over the ``expert_parallel`` dimension (rank r of it owns experts
``[r*E/EP, (r+1)*E/EP)``, whole), so DDP leaves them alone and their gradients
are reduced here, over ``expert_data_parallel`` (the ranks holding the same
experts).

Gradient scale: DDP averages over all W ranks, d/dθ (1/W) Σ_s L_s. An expert's
local gradient already sums the contributions of its EP group's tokens (the
all-to-all's backward brings them home), so summing over the expert-data-parallel
replicas and dividing by W gives the same average.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from kimi_lab.errors import ConfigError
from kimi_lab.model.moe.dispatch import ExpertShard
from kimi_lab.model.moe.experts import Experts
from kimi_lab.model.moe.router import SigmoidRouter

MESH_DIMS = ("expert_data_parallel", "expert_parallel")


@dataclass
class ExpertParallel:
    """What a training module needs to run, reduce, clip and save an expert-parallel model."""

    mesh: Any  # DeviceMesh (expert_data_parallel, expert_parallel)
    world: int
    # module name (relative to the root given to ``apply``) -> experts module
    modules: dict[str, Experts]

    @property
    def sharded(self) -> dict[nn.Parameter, ExpertShard]:
        """Parameter -> its shard (routed experts only). Looked up each time: materialising a
        meta-device model (``model.init.materialise_``) gives the modules new parameters."""
        return {p: m.shard for m in self.modules.values() if m.shard is not None for p in m.parameters()}

    @property
    def ep_group(self) -> Any:
        return self.mesh.get_group("expert_parallel")

    @property
    def edp_group(self) -> Any:
        return self.mesh.get_group("expert_data_parallel")

    @property
    def size(self) -> int:
        return self.mesh.size(1)


def build_mesh(expert_parallel: int, device_type: str) -> Any:
    from torch.distributed.device_mesh import init_device_mesh

    world = dist.get_world_size() if dist.is_initialized() else 1
    if world % expert_parallel:
        raise ConfigError(
            f"model.moe.expert_parallel={expert_parallel} must divide the number of processes ({world})"
        )
    return init_device_mesh(
        device_type, (world // expert_parallel, expert_parallel), mesh_dim_names=MESH_DIMS
    )


def apply(root: nn.Module, mesh: Any) -> ExpertParallel:
    """Shard every routed-experts module under ``root`` over the mesh's expert-parallel dimension."""
    ep = mesh.size(1)
    rank = mesh.get_local_rank("expert_parallel")
    group = mesh.get_group("expert_parallel")
    modules = {name: m for name, m in root.named_modules() if isinstance(m, Experts)}
    for m in modules.values():
        if m.n_experts % ep:
            raise ConfigError(
                f"model.moe.n_routed_experts={m.n_experts} must be a multiple of expert_parallel={ep}"
            )
        shard = ExpertShard(group, rank, ep, m.n_experts)
        m.shard_(shard)
        m._register_load_state_dict_pre_hook(_local_rows_of_canonical, with_module=True)
    world = dist.get_world_size()
    return ExpertParallel(mesh, world, modules)


def ddp_ignored_names(root: nn.Module, ep: ExpertParallel | None) -> list[str]:
    """Names DDP must neither broadcast nor all-reduce: EP-sharded experts (each rank holds
    different ones) and the routers' token counts (per-rank, summed at the optimizer step;
    DDP's buffer broadcast would overwrite them between micro-batches)."""
    names = [f"{n}.tokens_per_expert" for n, m in root.named_modules() if isinstance(m, SigmoidRouter)]
    if ep is not None:
        own = {id(p) for p in ep.sharded}
        names += [n for n, p in root.named_parameters() if id(p) in own]
    return names


# ---------------------------------------------------------------------- gradients
@torch.no_grad()
def reduce_expert_grads(ep: ExpertParallel) -> None:
    """Average the experts' gradients as DDP averages the rest: sum over replicas, / world."""
    params = [p for p in ep.sharded if p.requires_grad]
    for p in params:
        if p.grad is None:  # every rank must take part in the collective
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    if not grads:
        return
    if ep.mesh.size(0) > 1:
        flat = torch._utils._flatten_dense_tensors(grads)
        dist.all_reduce(flat, group=ep.edp_group)
        for g, r in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
            g.copy_(r)
    torch._foreach_div_(grads, float(ep.world))


@torch.no_grad()
def clip_grad_norm_(params: list[nn.Parameter], max_norm: float, ep: ExpertParallel) -> torch.Tensor:
    """torch's clip_grad_norm_ over the whole model: replicated gradients count once, each
    rank's own experts' gradients are summed over the expert-parallel group."""
    own = ep.sharded
    dense = [p.grad for p in params if p.grad is not None and p not in own]
    expert = [p.grad for p in params if p.grad is not None and p in own]
    zero = torch.zeros((), dtype=torch.float32, device=params[0].device if params else None)
    sq_dense = torch.stack(torch._foreach_norm(dense)).float().pow(2).sum() if dense else zero
    sq_expert = torch.stack(torch._foreach_norm(expert)).float().pow(2).sum() if expert else zero.clone()
    dist.all_reduce(sq_expert, group=ep.ep_group)
    total = (sq_dense + sq_expert).sqrt()
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    grads = dense + expert
    if grads:
        torch._foreach_mul_(grads, coef.to(grads[0].device))
    return total


# ------------------------------------------------------------ canonical checkpoints
def _gather_rows(t: torch.Tensor, shard: ExpertShard) -> torch.Tensor:
    parts = [torch.empty_like(t) for _ in range(shard.size)]
    dist.all_gather(parts, t.contiguous(), group=shard.group)
    return torch.cat(parts)


def _local_rows(t: torch.Tensor, shard: ExpertShard, local_rows: int) -> torch.Tensor:
    if t.ndim and t.shape[0] == local_rows * shard.size and shard.size > 1:
        return t.narrow(0, shard.rank * local_rows, local_rows).clone()
    return t


def _local_rows_of_canonical(module: Experts, state: dict, prefix: str, *_args: Any) -> None:
    """Load pre-hook: a canonical (all-experts) tensor becomes this rank's rows of it."""
    if module.shard is None:
        return
    # Local shapes under both the checkpoint's (canonical) names and the module's own, since a
    # backend's pre-hook may already have renamed the entries (MegaBlocks: w1 -> impl.mlp.w1).
    own = {**module.state_dict(keep_vars=True), **dict(module.named_parameters())}
    for name, t in own.items():
        key = prefix + name
        if key in state and t.ndim:
            state[key] = _local_rows(state[key], module.shard, t.shape[0])


def _optimizer_params(optimizer: torch.optim.Optimizer) -> list[nn.Parameter]:
    """Parameters in the order of the indices of ``optimizer.state_dict()``."""
    return [p for g in optimizer.param_groups for p in g["params"]]


def gather_checkpoint(checkpoint: dict[str, Any], ep: ExpertParallel, prefix: str, optimizers: list) -> None:
    """Rewrite a checkpoint dict (in place, on every rank: collective) in canonical layout:
    every expert tensor and its optimizer state whole, as a single process would save them."""
    state = checkpoint["state_dict"]
    for name, m in ep.modules.items():
        assert m.shard is not None
        for key in [k for k in state if k.startswith(f"{prefix}{name}.")]:
            if state[key].ndim:
                state[key] = _gather_rows(state[key], m.shard)
    for opt, opt_state in zip(optimizers, checkpoint.get("optimizer_states", [])):
        for i, p in enumerate(_optimizer_params(opt)):
            shard = ep.sharded.get(p)
            if shard is None or i not in opt_state["state"]:
                continue
            # A new dict: optimizer.state_dict() shares the live per-parameter state dicts.
            opt_state["state"][i] = {
                k: _gather_rows(v, shard) if torch.is_tensor(v) and v.ndim and v.shape[0] == p.shape[0] else v
                for k, v in opt_state["state"][i].items()
            }


def slice_optimizer_state(ep: ExpertParallel, optimizer: torch.optim.Optimizer) -> None:
    """Make ``optimizer.load_state_dict`` take canonical state: each rank keeps its experts' rows."""

    def hook(opt: torch.optim.Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
        for i, p in enumerate(_optimizer_params(opt)):
            shard = ep.sharded.get(p)
            if shard is None or i not in state_dict["state"]:
                continue
            entry = state_dict["state"][i]
            for k, v in entry.items():
                if torch.is_tensor(v) and v.ndim:
                    entry[k] = _local_rows(v, shard, p.shape[0])
        return state_dict

    optimizer.register_load_state_dict_pre_hook(hook)
