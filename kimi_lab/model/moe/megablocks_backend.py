"""MegaBlocks dropless-MoE experts (GPU only), behind the same interface as the torch backend.

MegaBlocks (and its torch==2.7.0 pin) is an optional extra: it is imported here,
lazily, and nowhere else. Routing stays ours (sigmoid + selection bias); MegaBlocks'
``ParallelDroplessMLP`` receives the chosen experts and gate weights and runs its
grouped-GEMM kernels. Its weights are (E*F, D) matrices w1 (gate), v1 (up) and w2
(down, F-major); state dicts expose them under the canonical names and shapes of
``experts.py`` (w1, w3, w2 as (E, F, D)), so checkpoints load into either backend.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F

from kimi_lab.errors import ConfigError
from kimi_lab.model.moe.dispatch import ExpertShard
from kimi_lab.model.moe.experts import Experts

_CANONICAL = {"w1": "impl.mlp.w1", "w3": "impl.mlp.v1", "w2": "impl.mlp.w2"}


def megablocks_unavailable_reason() -> str | None:
    """None when MegaBlocks can run here, else a one-line reason."""
    if not torch.cuda.is_available():
        return "MegaBlocks needs a CUDA GPU and this machine has none (use model.moe.backend=torch or auto)"
    try:
        import megablocks  # noqa: F401
    except Exception as exc:  # ImportError, or its CUDA extension failing to load
        return f"MegaBlocks is not importable ({type(exc).__name__}: {exc}); install it with pip install -e '.[gpu]'"
    return None


class MegaBlocksExperts(Experts):
    backend_name = "megablocks"

    def __init__(
        self,
        n_experts: int,
        dim: int,
        ffn_dim: int,
        top_k: int,
        init_std: float = 0.02,
        expert_parallel_group: Any = None,
    ) -> None:
        super().__init__()
        reason = megablocks_unavailable_reason()
        if reason is not None:
            raise ConfigError(f"model.moe.backend=megablocks: {reason}")
        self.n_experts, self.dim, self.ffn_dim, self.top_k, self.init_std = (
            n_experts,
            dim,
            ffn_dim,
            top_k,
            init_std,
        )
        self.impl = self._build(expert_parallel_group)
        self._register_state_dict_hook(_to_canonical)
        self._register_load_state_dict_pre_hook(_from_canonical, with_module=True)

    def _build(self, expert_parallel_group: Any) -> Any:
        from megablocks.layers.arguments import Arguments
        from megablocks.layers.dmoe import ParallelDroplessMLP

        init = functools.partial(torch.nn.init.normal_, mean=0.0, std=self.init_std)
        args = Arguments(
            hidden_size=self.dim,
            ffn_hidden_size=self.ffn_dim,
            moe_num_experts=self.n_experts,
            moe_top_k=self.top_k,  # MegaBlocks maps pair index -> token as index // top_k
            mlp_type="glu",
            mlp_impl="grouped",
            activation_fn=F.silu,
            bias=False,
            return_bias=False,
            moe_loss_weight=0.0,  # our router owns the balance losses (no global lists)
            fp16=False,
            bf16=False,  # fp32 master weights; cast per call under autocast
            device=torch.cuda.current_device(),
            init_method=init,
            output_layer_init_method=init,
            moe_expert_model_parallelism=expert_parallel_group is not None,
            expert_parallel_group=expert_parallel_group,
        )
        return ParallelDroplessMLP(args)

    def shard_(self, shard: ExpertShard) -> None:
        """MegaBlocks' own expert parallelism over ``shard.group``: it keeps experts
        ``[first, first + n_local)`` (rows of its (E*F, D) weights) and runs the all-to-all."""
        full = {name: p.detach() for name, p in self.impl.named_parameters()}
        self.impl = self._build(shard.group)
        with torch.no_grad():
            for name, p in self.impl.named_parameters():
                rows = p.shape[0]  # n_local * F of the E * F rows
                p.copy_(full[name][shard.rank * rows : (shard.rank + 1) * rows])
        self.shard = shard

    def forward(
        self, x_TD: torch.Tensor, top_idx_TK: torch.Tensor, top_weight_TK: torch.Tensor
    ) -> torch.Tensor:
        dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else x_TD.dtype
        x = x_TD.to(dtype)
        # Grouped GEMM does not autocast: hand it weights cast to the compute dtype,
        # still differentiable back to the fp32 masters.
        params = {name: p.to(dtype) for name, p in self.impl.named_parameters()}
        # scores only feed MegaBlocks' own balance loss, which is disabled (weight 0).
        scores = torch.zeros(x.shape[0], self.n_experts, device=x.device, dtype=dtype)
        out = torch.func.functional_call(
            self.impl, params, (x, scores, top_weight_TK.to(dtype), top_idx_TK.int())
        )
        return out.view(x_TD.shape)


def _to_canonical(module: MegaBlocksExperts, state: dict, prefix: str, _meta: Any) -> dict:
    Fd, D = module.ffn_dim, module.dim
    for canonical, native in _CANONICAL.items():
        key = prefix + native
        if key in state:
            state[prefix + canonical] = state.pop(key).view(-1, Fd, D)
    return state


def _from_canonical(module: MegaBlocksExperts, state: dict, prefix: str, *_args: Any) -> None:
    for canonical, native in _CANONICAL.items():
        key = prefix + canonical
        if key in state:
            state[prefix + native] = state.pop(key).reshape(-1, module.dim)
