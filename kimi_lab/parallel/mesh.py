"""One device mesh for every way a sharded run splits the model (torchtitan's ParallelDims).

The ranks form a 3-D mesh ``(dp_replicate, dp_shard_mod_ep, ep)``, expert parallelism
innermost (neighbouring ranks: one node on a cluster). Every rank reads its own data.
Named sub-meshes, all cut from that one mesh (FSDP2 composes its shards with the
expert-parallel split only for meshes with one root):

- ``dp_shard`` = (dp_shard_mod_ep, ep) flattened: FSDP2 shards of every non-expert weight;
  with ``dp_replicate`` > 1 that is HSDP (shards within a replica, gradients averaged over
  replicas);
- ``ep``: the routed experts are split over it, whole, and tokens travel over it;
- ``dp_shard_mod_ep``: what EP leaves; FSDP2 shards each rank's experts over it (HSDP
  with ``dp_replicate``).

For 8 ranks, ``ep=2``: the mesh is ``[[[0, 1], [2, 3], [4, 5], [6, 7]]]``; attention and
the shared experts are cut 8 ways; ranks 0 and 1 split each layer's experts (0 holds the
first half) and exchange tokens, and 0, 2, 4, 6 each keep a quarter of the first half.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kimi_lab.errors import ConfigError

MESH_DIMS = ("dp_replicate", "dp_shard_mod_ep", "ep")


@dataclass(frozen=True)
class ParallelDims:
    """The sizes of a sharded run's mesh (``build`` makes it once the processes are connected)."""

    world: int
    ep: int = 1
    dp_replicate: int = 1

    @property
    def dp_shard(self) -> int:
        return self.world // self.dp_replicate

    @property
    def dp_shard_mod_ep(self) -> int:
        return self.dp_shard // self.ep

    def validate(self, n_routed_experts: int | None = None) -> None:
        if self.dp_replicate < 1 or self.world % self.dp_replicate:
            raise ConfigError(
                f"trainer.dp_replicate={self.dp_replicate} must divide the number of processes ({self.world})"
            )
        if self.ep < 1 or self.dp_shard % self.ep:
            raise ConfigError(
                f"model.moe.expert_parallel={self.ep} must divide the ranks of one replica "
                f"({self.world} processes / trainer.dp_replicate={self.dp_replicate} = {self.dp_shard})"
            )
        if n_routed_experts is not None and n_routed_experts % self.ep:
            raise ConfigError(
                f"model.moe.n_routed_experts={n_routed_experts} must be a multiple of expert_parallel={self.ep}"
            )

    def build(self, device_type: str) -> Meshes:
        from torch.distributed.device_mesh import init_device_mesh

        self.validate()
        root = init_device_mesh(
            device_type, (self.dp_replicate, self.dp_shard_mod_ep, self.ep), mesh_dim_names=MESH_DIMS
        )
        dp_shard = root["dp_shard_mod_ep", "ep"]._flatten(mesh_dim_name="dp_shard")
        return Meshes(self, root, dp_shard)


@dataclass
class Meshes:
    dims: ParallelDims
    root: Any  # DeviceMesh
    dp_shard: Any  # (dp_shard_mod_ep, ep) flattened

    @property
    def fsdp(self) -> Any:
        """Where the non-expert weights are sharded (and replicated, for HSDP)."""
        if self.dims.dp_replicate > 1:
            return self.root["dp_replicate", "dp_shard"]
        return self.dp_shard

    @property
    def expert_fsdp(self) -> Any:
        """Where each rank's experts are sharded further: what the expert-parallel split leaves."""
        if self.dims.dp_replicate > 1:
            return self.root["dp_replicate", "dp_shard_mod_ep"]
        return self.root["dp_shard_mod_ep"]

    @property
    def ep(self) -> Any:
        return self.root["ep"]

    def describe(self) -> str:
        d = self.dims
        return (
            f"mesh {MESH_DIMS} = ({d.dp_replicate}, {d.dp_shard_mod_ep}, {d.ep}): non-expert weights "
            f"sharded {d.dp_shard} ways"
            + (f" x {d.dp_replicate} replicas" if d.dp_replicate > 1 else "")
            + f", routed experts split {d.ep} ways (expert parallel) and each part sharded "
            f"{d.dp_shard_mod_ep} ways"
        )
