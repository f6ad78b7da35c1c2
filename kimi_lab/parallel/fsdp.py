"""FSDP2 x expert parallelism for kimi_lab models, applied in one place, in a fixed order
(torchtitan's): split the routed experts over ``ep``, wrap layers for activation checkpointing,
then ``fully_shard`` the experts over what ``ep`` leaves, each decoder layer and the root over
all ranks (``parallel.mesh`` names the meshes).

Under expert parallelism each routed-experts tensor is a DTensor of its whole (E, F, D) shape,
``Shard(0)`` over ``ep`` (rank r of it holds experts [r E/ep, (r+1) E/ep), whole), which FSDP2
shards again over ``dp_shard_mod_ep``: parameters, gradients and optimizer state keep the
canonical names and shapes, so torch.distributed.checkpoint writes every rank's own rows
and reads them back into any other layout; no rank ever gathers a layer's experts.

Gradient scale: FSDP2 averages over the ranks of its mesh. An expert's local gradient
already sums its EP group's tokens (the all-to-all's backward brings them home), so the
experts' reduction divides by the whole world instead, as the rest is averaged.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from kimi_lab.errors import ConfigError
from kimi_lab.model.moe.dispatch import ExpertShard
from kimi_lab.model.moe.experts import TorchExperts
from kimi_lab.parallel.activation_checkpointing import apply_activation_checkpointing, unwrap
from kimi_lab.parallel.mesh import Meshes


def distribute_experts(model: nn.Module, ep_mesh: Any) -> None:
    """Keep this rank's experts, as DTensors ``Shard(0)`` over ``ep_mesh`` (meta tensors stay meta)."""
    from torch.distributed.tensor import DTensor, Shard

    size, rank = ep_mesh.size(), ep_mesh.get_local_rank()
    for m in model.modules():
        if not hasattr(m, "shard_") or not hasattr(m, "n_experts"):
            continue
        if not isinstance(m, TorchExperts):
            raise ConfigError(
                f"model.moe.backend={m.backend_name} under trainer=fsdp2 with expert_parallel > 1: "
                "use model.moe.backend=torch (its grouped GEMM runs on CUDA too)"
            )
        if m.n_experts % size:
            raise ConfigError(
                f"model.moe.n_routed_experts={m.n_experts} must be a multiple of expert_parallel={size}"
            )
        m.shard_(ExpertShard(ep_mesh.get_group(), rank, size, m.n_experts))
        for name in ("w1", "w3", "w2"):
            p = getattr(m, name)
            whole = DTensor.from_local(p.data, ep_mesh, [Shard(0)], run_check=False)
            setattr(m, name, nn.Parameter(whole, requires_grad=p.requires_grad))


def _divide_gradients_by(module: Any, factor: int, mesh: Any) -> None:
    # torch >= 2.8 calls it set_gradient_divide_factor; 2.7 set_reduce_scatter_divide_factor
    setter = getattr(module, "set_gradient_divide_factor", None) or module.set_reduce_scatter_divide_factor
    setter(float(factor))
    # gloo has no pre-multiplied sum: sum, then divide. (Not where the shard dimension has one
    # rank: FSDP2 then divides while copying and, with sums forced, divides a second time.)
    shards = mesh.size(mesh.ndim - 1)
    if mesh.device_type == "cpu" and shards > 1 and hasattr(module, "set_force_sum_reduction_for_comms"):
        module.set_force_sum_reduction_for_comms(True)


def _sums_on_gloo(mesh: Any) -> bool:
    """torch < 2.8 asks gloo for an average (or NCCL's pre-multiplied sum), and gloo sums."""
    major, minor = (int(x) for x in torch.__version__.split(".")[:2])
    return mesh.device_type == "cpu" and (major, minor) < (2, 8)


def parallelize(
    model: nn.Module,
    meshes: Meshes,
    activation_checkpointing: str = "none",
    param_dtype: torch.dtype | None = None,
) -> None:
    """Lay out a ``KimiK25`` (on the meta device or not) over ``meshes``. ``param_dtype``
    (bf16 under ``bf16-mixed``): FSDP2 gathers the weights in it and reduces gradients in fp32,
    so a gathered unit costs half, and the fp32 shards stay the master weights."""
    from torch.distributed.fsdp import MixedPrecisionPolicy
    from torch.distributed.fsdp import fully_shard as _fully_shard

    policy = MixedPrecisionPolicy(
        param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None
    )
    world = meshes.dims.world

    def fully_shard(module: Any, mesh: Any) -> Any:
        sharded = _fully_shard(module, mesh=mesh, mp_policy=policy)
        if _sums_on_gloo(mesh):  # every gradient is then the sum over its ranks: average it here
            unit = sharded[0] if isinstance(sharded, list) else sharded  # modules of one unit share it
            unit.set_all_reduce_hook(lambda reduced: reduced.div_(world))
        return sharded

    # The experts return a view of their output, which the MoE layer only ever adds out of place.
    warnings.filterwarnings("ignore", message=r".*FSDP2-wrapped module \(FSDPTorchExperts\) returned a view")

    dims = meshes.dims
    for m in model.modules():
        if isinstance(m, TorchExperts):
            m.unfuse_()  # FSDP2 shards contiguous parameters only: w1 and w3 get storages of their own
    if dims.ep > 1:
        distribute_experts(model, meshes.ep)
    apply_activation_checkpointing(model, activation_checkpointing)
    lm = model.language_model
    for layer in lm.layers:
        inner = unwrap(layer)
        if dims.ep > 1 and inner.is_moe:
            experts = unwrap(inner.ffn.experts)
            fully_shard(experts, mesh=meshes.expert_fsdp)
            _divide_gradients_by(experts, dims.world, meshes.expert_fsdp)
        fully_shard(layer, mesh=meshes.fsdp)
    # Units of their own for the vocabulary-sized tables (K2: 1.2B parameters each) and the vision
    # blocks, so the root unit, gathered for the whole step, holds next to nothing.
    if not model.cfg.tie_embeddings:
        fully_shard(lm.embed, mesh=meshes.fsdp)
        fully_shard([lm.norm, lm.lm_head], mesh=meshes.fsdp)
    if model.vision_tower is not None:
        for block in model.vision_tower.layers:
            fully_shard(block, mesh=meshes.fsdp)
    fully_shard(model, mesh=meshes.fsdp)


# ------------------------------------------------------------------ gradient clipping
@torch.no_grad()
def clip_grad_norm_(params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """torch's clip_grad_norm_ over the whole model for sharded (DTensor) gradients that live on
    different meshes (experts on the expert-parallel mesh, the rest on the FSDP mesh): each
    mesh's norm is reduced over its own ranks, then the parts are combined."""
    from torch.distributed.tensor import DTensor

    groups: dict[Any, list[torch.Tensor]] = {}
    for p in params:
        if p.grad is not None:
            key = p.grad.device_mesh if isinstance(p.grad, DTensor) else None
            groups.setdefault(key, []).append(p.grad)
    sq = torch.zeros((), dtype=torch.float64)
    for grads in groups.values():
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)).float())
        if isinstance(norm, DTensor):
            norm = norm.full_tensor()
        sq += norm.double().cpu() ** 2
    total = sq.sqrt().float()
    coef = min(1.0, max_norm / (float(total) + 1e-6))
    if coef < 1.0:
        for grads in groups.values():
            torch._foreach_mul_([g.to_local() if isinstance(g, DTensor) else g for g in grads], coef)
    return total
