"""FSDP2 for kimi_lab models: every decoder layer, then the rest, sharded over one mesh."""

from __future__ import annotations

import torch.nn as nn
from torch.distributed.device_mesh import DeviceMesh


def shard_model(model: nn.Module, mesh: DeviceMesh) -> None:
    """``fully_shard`` each decoder layer of a ``KimiK25`` (or ``K2Model``) and then the model.

    Routed experts store w1 and w3 as two halves of one storage (one fused matmul); FSDP2
    shards contiguous parameters only, so they get storages of their own first.
    """
    from torch.distributed.fsdp import fully_shard

    from kimi_lab.model.moe.experts import TorchExperts

    for m in model.modules():
        if isinstance(m, TorchExperts):
            m.unfuse_()
    lm = getattr(model, "language_model", model)
    for layer in lm.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
