"""Muon for weight matrices, AdamW for everything else, in one optimizer (K2's MuonClip minus the clip).

Muon (per matrix W of shape n x m, batched over leading dims such as experts):
    M <- mu * M + G                    (momentum; Nesterov optional)
    O <- orthogonalise(M)              (Newton-Schulz: 5 quintic steps, as Moonlight and K2)
    W <- W - lr * (0.2 * sqrt(max(n, m)) * O + wd * W)
The 0.2 * sqrt(max(n, m)) factor gives the update the RMS of a typical AdamW
update (about 0.2), so both kinds of parameters share one learning rate.

The quintic's coefficients (3.4445, -4.7750, 2.0315) trade exactness for speed:
after 5 steps the singular values sit in roughly [0.7, 1.2], not at 1, and that
is the reference update. ``ns_polish_steps`` (default 0) adds cubic steps that
bring them to 1; the update then grows by 12-16%, a deviation from K2 to opt
into, not a default.

A parameter that stores several matrices fused along its rows (``w13`` = gate
and up in one Linear) is orthogonalised part by part: the reference models keep
gate_proj and up_proj apart, and orthogonalising the stack would couple them.
The parts come from ``fused_row_parts`` of the parameter group (see
``optim.groups``); each part gets its own scale.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

QUINTIC = (3.4445, -4.7750, 2.0315)


@torch.no_grad()
def orthogonalise(G: torch.Tensor, steps: int = 5, polish: int = 0, eps: float = 1e-7) -> torch.Tensor:
    """U V^T of G = U S V^T (per matrix over the last two dims), by Newton-Schulz in fp32."""
    X = G.float()
    transposed = X.shape[-2] > X.shape[-1]
    if transposed:  # iterate on the wide side: fewer flops in X X^T
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + eps)  # spectral norm <= Frobenius norm <= 1
    a, b, c = QUINTIC
    for _ in range(steps):
        A = X @ X.mT
        X = a * X + (b * A + c * A @ A) @ X
    for _ in range(polish):  # x -> 1.5x - 0.5x^3 converges quadratically to 1 on (0, sqrt(3))
        X = 1.5 * X - 0.5 * (X @ X.mT) @ X
    return X.mT if transposed else X


def orthogonalise_whole(G: torch.Tensor, steps: int = 5, polish: int = 0) -> torch.Tensor:
    """``orthogonalise`` of plain or sharded (DTensor, FSDP2) tensors, matrix by matrix.

    Newton-Schulz needs whole matrices. Sharded only over leading (batch) dims, as FSDP2's
    dim-0 sharding leaves a (E, F, D) expert tensor, every local matrix is whole: orthogonalise
    in place. Otherwise (a 2-D weight cut by rows) gather the matrix on every rank, orthogonalise,
    and keep this rank's shard of the result.
    """
    from torch.distributed.tensor import DTensor, Replicate, Shard

    if not isinstance(G, DTensor):
        return orthogonalise(G, steps, polish)
    mesh, placements = G.device_mesh, G.placements
    if all(not isinstance(pl, Shard) or pl.dim < G.ndim - 2 for pl in placements):
        local = orthogonalise(G.to_local(), steps, polish)
        return DTensor.from_local(local, mesh, placements, shape=G.shape, stride=G.stride())
    whole = orthogonalise(G.full_tensor(), steps, polish)
    replicated = DTensor.from_local(whole, mesh, [Replicate()] * mesh.ndim, run_check=False)
    return replicated.redistribute(mesh, placements)  # Replicate -> Shard: a local slice, no traffic


def muon_scale(shape: torch.Size) -> float:
    return 0.2 * math.sqrt(max(shape[-2], shape[-1]))


def muon_update(
    direction: torch.Tensor, parts: tuple[int, ...] | None = None, steps: int = 5, polish: int = 0
) -> torch.Tensor:
    """The scaled, orthogonalised update of one parameter; ``parts`` splits its rows into matrices
    that are orthogonalised (and scaled) on their own. Sharded (DTensor) directions are
    orthogonalised on whole matrices (``orthogonalise_whole``)."""
    if not parts or len(parts) == 1:
        return orthogonalise_whole(direction, steps, polish) * muon_scale(direction.shape)
    from torch.distributed.tensor import DTensor, Replicate

    if isinstance(direction, DTensor):  # rows of fused parts may sit on other ranks: gather first
        whole = muon_update(direction.full_tensor(), parts, steps, polish)
        mesh, placements = direction.device_mesh, direction.placements
        replicated = DTensor.from_local(whole, mesh, [Replicate()] * mesh.ndim, run_check=False)
        return replicated.redistribute(mesh, placements)
    if sum(parts) != direction.shape[-2]:
        raise ValueError(f"fused parts {parts} do not add up to the {direction.shape[-2]} rows")
    if len(set(parts)) == 1:  # equal parts: one batched Newton-Schulz over a new leading dim
        stacked = direction.unflatten(-2, (len(parts), parts[0]))
        return (orthogonalise(stacked, steps, polish) * muon_scale(stacked.shape)).flatten(-3, -2)
    pieces = direction.split(parts, dim=-2)
    return torch.cat([orthogonalise(x, steps, polish) * muon_scale(x.shape) for x in pieces], dim=-2)


class MuonAdamW(torch.optim.Optimizer):
    """Param groups with ``use_muon=True`` get Muon; the others get AdamW."""

    def __init__(
        self,
        params: Iterable[dict[str, Any]],
        lr: float,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = False,
        ns_steps: int = 5,
        ns_polish_steps: int = 0,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
    ) -> None:
        defaults = dict(
            lr=lr,
            weight_decay=weight_decay,
            momentum=momentum,
            nesterov=nesterov,
            ns_steps=ns_steps,
            ns_polish_steps=ns_polish_steps,
            betas=betas,
            eps=eps,
            use_muon=False,
            fused_row_parts=None,
        )
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["use_muon"] and any(p.ndim < 2 for p in group["params"]):
                raise ValueError(f"Muon group {group.get('name', '?')} holds a tensor that is not a matrix")
            parts = group["fused_row_parts"]
            if parts is not None and len(parts) != len(group["params"]):
                raise ValueError(f"group {group.get('name', '?')}: one fused_row_parts entry per parameter")

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["use_muon"]:
                self._muon(group)
            else:
                self._adamw(group)
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """The fused parts are the model's structure, not a hyperparameter: the current groups'
        parts win over the saved ones (a checkpoint from before they existed has none)."""
        parts = [g["fused_row_parts"] for g in self.param_groups]
        super().load_state_dict(state_dict)
        for group, p in zip(self.param_groups, parts):
            group["fused_row_parts"] = p

    def _muon(self, group: dict[str, Any]) -> None:
        lr, wd, mu = group["lr"], group["weight_decay"], group["momentum"]
        parts = group["fused_row_parts"] or [None] * len(group["params"])
        for p, p_parts in zip(group["params"], parts):
            if p.grad is None:
                continue
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p, dtype=torch.float32)
            buf = state["momentum_buffer"]
            buf.mul_(mu).add_(p.grad.float())
            direction = p.grad.float().add(buf, alpha=mu) if group["nesterov"] else buf
            update = muon_update(direction, p_parts, group["ns_steps"], group["ns_polish_steps"])
            if wd:
                p.mul_(1 - lr * wd)  # decoupled weight decay
            p.add_(update.to(p.dtype), alpha=-lr)

    def _adamw(self, group: dict[str, Any]) -> None:
        lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
        beta1, beta2 = group["betas"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
            state["step"] += 1
            g = p.grad.float()
            state["exp_avg"].lerp_(g, 1 - beta1)
            state["exp_avg_sq"].mul_(beta2).addcmul_(g, g, value=1 - beta2)
            bias1 = 1 - beta1 ** state["step"]
            bias2 = 1 - beta2 ** state["step"]
            denom = (state["exp_avg_sq"] / bias2).sqrt_().add_(eps)
            if wd:
                p.mul_(1 - lr * wd)
            p.addcdiv_(state["exp_avg"].to(p.dtype), denom.to(p.dtype), value=-lr / bias1)
