"""The MoE feed-forward block: router -> routed experts (+ shared experts) -> router losses."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from kimi_lab.config.schema import MoEBackend, MoEConfig
from kimi_lab.errors import ConfigError
from kimi_lab.model.mlp import SwiGLU
from kimi_lab.model.moe.decode import DECODE_MAX_TOKENS, decode_experts, decode_strategy
from kimi_lab.model.moe.experts import Experts, TorchExperts
from kimi_lab.model.moe.losses import router_z_loss, sequence_balance_loss
from kimi_lab.model.moe.megablocks_backend import MegaBlocksExperts, megablocks_unavailable_reason
from kimi_lab.model.moe.router import SigmoidRouter

log = logging.getLogger(__name__)


def resolve_backend(requested: MoEBackend, device_type: str) -> tuple[str, str]:
    """(backend, why). ``auto`` picks MegaBlocks for CUDA runs where it imports, else torch."""
    if requested == MoEBackend.torch:
        return "torch", "requested"
    if requested == MoEBackend.megablocks:
        reason = megablocks_unavailable_reason()
        if reason is not None:
            raise ConfigError(f"model.moe.backend=megablocks: {reason}")
        return "megablocks", "requested"
    if device_type != "cuda":
        return "torch", f"auto: the run is on {device_type}, MegaBlocks needs CUDA"
    reason = megablocks_unavailable_reason()
    if reason is not None:
        return "torch", f"auto: {reason}"
    return "megablocks", "auto: CUDA and MegaBlocks are available"


@dataclass
class MoEAux:
    loss: torch.Tensor  # weighted sum of the enabled router losses (0 when none)
    seq_balance: torch.Tensor  # detached, unweighted
    z_loss: torch.Tensor  # detached, unweighted


class MoELayer(nn.Module):
    def __init__(self, dim: int, cfg: MoEConfig, backend: str = "torch", init_std: float = 0.02) -> None:
        super().__init__()
        self.cfg = cfg
        self.router = SigmoidRouter(dim, cfg.n_routed_experts, cfg.top_k, cfg.routed_scaling_factor, init_std)
        self.experts: Experts
        if backend == "megablocks":
            self.experts = MegaBlocksExperts(
                cfg.n_routed_experts, dim, cfg.expert_ffn_dim, cfg.top_k, init_std
            )
        else:
            self.experts = TorchExperts(cfg.n_routed_experts, dim, cfg.expert_ffn_dim, init_std)
        self.shared = (
            SwiGLU(dim, cfg.n_shared_experts * cfg.expert_ffn_dim) if cfg.n_shared_experts > 0 else None
        )
        # Few tokens without gradients take kimi_lab.model.moe.decode (it needs every expert's weights).
        self.decode_path = True
        self.last_decode_form: str | None = None  # the decode form the last decode step ran (benchmarks)
        # Set by the routing inspector: keeps the last routing decisions (detached).
        self.record_routing = False
        self.last_routing: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(
        self, x_BTD: torch.Tensor, real_BT: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, MoEAux]:
        """``real_BT`` (B, T) bool marks real tokens; padding is left out of the router's counts
        and of the balance loss."""
        B, T, D = x_BTD.shape
        x_TD = x_BTD.reshape(B * T, D)
        real_T = None if real_BT is None else real_BT.reshape(B * T).bool()
        routing = self.router(x_TD, real_T)
        if self.record_routing:
            self.last_routing = (
                routing.top_idx_TK.view(B, T, -1).detach(),
                routing.top_weight_TK.view(B, T, -1).detach(),
            )
        decode = B * T <= DECODE_MAX_TOKENS and not torch.is_grad_enabled() and self.decode_path
        if decode and self.experts.shard is None:  # (under expert parallelism tokens must travel)
            # A decode step: a handful of tokens, a fixed-shape path without sort or host sync.
            e, idx = self.experts, routing.top_idx_TK
            self.last_decode_form = decode_strategy(B * T, idx.shape[1], e.w1, idx)
            y_TD = decode_experts(x_TD, idx, routing.top_weight_TK, e.w1, e.w3, e.w2, self.last_decode_form)
        else:
            y_TD = self.experts(x_TD, routing.top_idx_TK, routing.top_weight_TK)
        if self.shared is not None:
            y_TD = y_TD + self.shared(x_TD)

        zero = x_BTD.new_zeros((), dtype=torch.float32)
        loss, seq, z = zero, zero, zero
        if self.cfg.seq_aux_loss_coef > 0 and self.training:
            seq = sequence_balance_loss(
                routing.scores_TE.view(B, T, -1),
                routing.top_idx_TK.view(B, T, -1),
                None if real_T is None else real_T.view(B, T),
            )
            loss = loss + self.cfg.seq_aux_loss_coef * seq
        if self.cfg.z_loss_coef > 0 and self.training:
            z = router_z_loss(routing.logits_TE)
            loss = loss + self.cfg.z_loss_coef * z
        return y_TD.view(B, T, D), MoEAux(loss, seq.detach(), z.detach())
