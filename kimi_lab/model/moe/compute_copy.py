"""The routed experts' weights in the compute dtype (bf16), cast once per change of the fp32 masters.

Under bf16 autocast every forward would cast all expert weights fp32 -> bf16: at 384
experts of the ``bench moe`` shape that is 576 MB read and 288 MB written per micro-batch,
more memory traffic than the layer's matmuls. The masters stay fp32 parameters (the
optimizer, Muon included, and checkpoints see only them); this keeps their bf16 copy and
recasts it only when a master changed.

A master changes by an in-place write (an optimizer step, ``load_state_dict``'s copy) or
by getting new storage (``.to()``, ``.data =``). The key holds all three signs of it: every
in-place op bumps a tensor's version counter, new storage has a new address, and an
optimizer step hook counts the steps of every optimizer holding a master (torch's fused
optimizers write parameters without bumping their version counters). So any optimizer
invalidates the copy, and a resumed run rebuilds it from the checkpoint's masters, bit for
bit the copy the uninterrupted run held.

The copy costs half the masters' memory. It is never made for sharded (DTensor) or other
subclassed weights, nor while a graph is being compiled; the experts switch it off where a
sharding wrapper owns the weights (``TorchExperts.unfuse_``: FSDP2 gathers full weights
for each forward and frees them after; a copy kept here would undo the sharding).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils.weak import WeakIdKeyDictionary

from kimi_lab.model.moe.expert_matmuls import fused_gate_up

# master -> optimizer steps taken on it, for the masters that have a copy
_steps: WeakIdKeyDictionary = WeakIdKeyDictionary()
_hook: Any = None


def _count_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p in _steps:
                _steps[p] += 1


def _watch(w: torch.Tensor) -> int:
    """Steps taken on ``w`` by any optimizer, counted from now on."""
    global _hook
    if _hook is None:  # one process-wide hook: it runs after every optimizer's step
        _hook = register_optimizer_step_post_hook(_count_step)
    if w not in _steps:
        _steps[w] = 0
    return _steps[w]


def _plain(w: torch.Tensor) -> bool:
    return type(w) in (torch.Tensor, nn.Parameter) and w.device.type != "meta"


class ComputeCopy:
    """``get(w1, w3, w2, dtype) -> (w13_E2FD, w2_EFD)`` in ``dtype``, recast only when a master changed."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._value: tuple[torch.Tensor, torch.Tensor] | None = None

    def clear(self) -> None:
        self._key, self._value = None, None

    @property
    def nbytes(self) -> int:
        return 0 if self._value is None else sum(t.numel() * t.element_size() for t in self._value)

    def get(
        self, w1: torch.Tensor, w3: torch.Tensor, w2: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        if not all(_plain(w) for w in (w1, w3, w2)) or torch.compiler.is_compiling():
            return None
        key = (*((w.data_ptr(), w._version, _watch(w)) for w in (w1, w3, w2)), dtype, w1.device)
        if key != self._key:
            self.clear()  # free the stale copy before making the new one
            # A normal tensor even inside inference_mode, so training may reuse it later.
            with torch.inference_mode(False), torch.no_grad():  # (this order: the first enables grad)
                w13 = fused_gate_up(w1, w3)
                if w13 is None:
                    w13 = torch.cat([w1.detach(), w3.detach()], dim=1)
                self._value = (w13.to(dtype), w2.detach().to(dtype))
            self._key = key
        return self._value
