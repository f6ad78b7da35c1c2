"""Mixture-of-Experts: sigmoid router, dropless experts (torch / MegaBlocks), balancing."""

from kimi_lab.model.moe.balance import update_router_biases
from kimi_lab.model.moe.experts import Experts, TorchExperts, reference_experts
from kimi_lab.model.moe.layer import MoEAux, MoELayer, resolve_backend
from kimi_lab.model.moe.router import Routing, SigmoidRouter

__all__ = [
    "Experts",
    "MoEAux",
    "MoELayer",
    "Routing",
    "SigmoidRouter",
    "TorchExperts",
    "reference_experts",
    "resolve_backend",
    "update_router_biases",
]
