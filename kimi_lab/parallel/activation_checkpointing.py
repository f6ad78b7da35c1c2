"""Activation checkpointing per decoder layer (``trainer.activation_checkpointing``).

- ``none``: every activation is kept for the backward pass;
- ``full``: each decoder layer keeps only its input and runs its forward again in the
  backward pass (about one more forward of compute; activations of one layer at a time);
- ``moe``: only the routed experts of each MoE layer are recomputed: their token copies and
  hidden activations (top_k x (D + 3 F) values per token) are the largest part of a K2 layer's
  activations, and attention keeps what it saved.

torch's ``checkpoint_wrapper`` (non-reentrant) does it; parameter and state-dict names do not
change (the wrapper's level is dropped from state dicts, and ``model.init.canonical_name`` drops
it from parameter names). Recomputation routes the same tokens again: routers count their
tokens in the first forward only (``SigmoidRouter``), and under expert parallelism the
all-to-alls run again in the same order on every rank.
"""

from __future__ import annotations

from torch import nn

MODES = ("none", "full", "moe")


def unwrap(module: nn.Module) -> nn.Module:
    return getattr(module, "_checkpoint_wrapped_module", module)


def apply_activation_checkpointing(model: nn.Module, mode: str) -> None:
    """Wrap ``model``'s language-model layers (``full``) or routed experts (``moe``) in place."""
    if mode not in MODES:
        raise ValueError(f"activation checkpointing {mode!r}: choose from {', '.join(MODES)}")
    if mode == "none":
        return
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper

    layers = model.language_model.layers
    for i, layer in enumerate(layers):
        if mode == "full":
            if unwrap(layer) is layer:
                layers[i] = checkpoint_wrapper(layer, checkpoint_impl=CheckpointImpl.NO_REENTRANT)
        elif layer.is_moe and unwrap(layer.ffn.experts) is layer.ffn.experts:
            layer.ffn.experts = checkpoint_wrapper(
                layer.ffn.experts, checkpoint_impl=CheckpointImpl.NO_REENTRANT
            )
