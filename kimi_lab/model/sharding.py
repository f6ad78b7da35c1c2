"""In-place weight edits that work the same on plain and on sharded (DTensor, FSDP2) parameters."""

from __future__ import annotations

import torch


@torch.no_grad()
def scale_rows_(w: torch.Tensor, scale_R: torch.Tensor) -> None:
    """``w[r] *= scale_R[r]`` in place. A DTensor is edited through its local shard: each rank
    scales the rows it holds (whatever dimension it is sharded on), so nothing is gathered."""
    from torch.distributed.tensor import DTensor

    if isinstance(w, DTensor):
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

        shape, offset = compute_local_shape_and_global_offset(w.shape, w.device_mesh, w.placements)
        local = w.to_local()
        scale_R = scale_R[offset[0] : offset[0] + shape[0]]
    else:
        local = w
    local.mul_(scale_R.to(device=local.device, dtype=local.dtype).view(-1, *[1] * (local.ndim - 1)))


def local_part(w: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...], tuple[int, ...]]:
    """(this rank's tensor, the whole tensor's shape, where the local block starts in it).

    A DTensor's local shard is one box of the whole tensor (FSDP2's dim-0 or dim-1 shards, an
    expert-parallel split, or both); a plain tensor is its own whole."""
    from torch.distributed.tensor import DTensor

    if isinstance(w, DTensor):
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

        _, offset = compute_local_shape_and_global_offset(w.shape, w.device_mesh, w.placements)
        return w.to_local(), tuple(w.shape), tuple(offset)
    return w, tuple(w.shape), (0,) * w.ndim
