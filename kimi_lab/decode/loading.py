"""One checkpoint loader below every consumer: a kimi_lab checkpoint -> a ready model.

serve, eval, swarm checkpoint policies, the dashboard's routing inspector,
generate/chat and ``phase.init_from`` all come through here, so a checkpoint
format (one Lightning file, a sharded torch.distributed.checkpoint folder, one
written by ``import-hf``) is understood in one place.

- ``read_config``: the run config alone (cheap: a memory-mapped file or the
  sharded folder's ``meta.pt``; no weights are read).
- ``read_checkpoint``: config + the model's state dict + the raw checkpoint.
- ``load_weights``: a checkpoint's weights into an existing model, straight from
  the shards for a sharded folder (never a consolidated copy).
- ``load_model``: config, model (eval mode, torch experts backend) and tokenizer.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from kimi_lab.config import to_run_config
from kimi_lab.config.schema import MoEBackend, RunConfig
from kimi_lab.errors import ConfigError, one_line

if TYPE_CHECKING:
    from kimi_lab.data.tokenizer import Tokenizer
    from kimi_lab.model.multimodal import KimiK25

# The Lightning module keeps the KimiK25 under this attribute.
PREFIX = "model."


def _check_exists(path: Path) -> None:
    from kimi_lab.tracking.checkpoint_io import is_sharded_checkpoint

    if not path.is_file() and not is_sharded_checkpoint(path):
        raise ConfigError(f"{path}: no such checkpoint file (or sharded checkpoint folder)")


def _torch_load(path: Path) -> dict[str, Any]:
    try:
        # mmap: tensors are paged in when used, so reading the config costs no weights.
        return torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as exn:  # truncated / not a torch file
        raise ConfigError(f"{path}: not a readable checkpoint ({type(exn).__name__}: {exn})") from None


def _meta(path: Path) -> dict[str, Any]:
    """The checkpoint dict without (or with lazily mapped) weights."""
    _check_exists(path)
    return _torch_load(path / "meta.pt" if path.is_dir() else path)


def _run_config(path: Path, ckpt: dict[str, Any]) -> RunConfig:
    config = (ckpt.get("hyper_parameters") or {}).get("config")
    if config is None:
        raise ConfigError(f"{path}: not a kimi_lab checkpoint (no config in its hyper_parameters)")
    return to_run_config(config)


def read_config(path: str | Path) -> RunConfig:
    """The run config a checkpoint was trained with; reads no weights."""
    path = Path(path)
    return _run_config(path, _meta(path))


def read_checkpoint(path: str | Path) -> tuple[RunConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """(run config, KimiK25 state dict, raw checkpoint) of a kimi_lab checkpoint, in one process."""
    from kimi_lab.tracking.checkpoint_io import consolidate

    path = Path(path)
    _check_exists(path)
    if path.is_dir():
        try:
            ckpt = consolidate(path)
        except Exception as exn:
            raise ConfigError(
                f"{path}: not a readable sharded checkpoint ({type(exn).__name__}: {exn})"
            ) from None
    else:
        ckpt = _torch_load(path)
    cfg = _run_config(path, ckpt)
    if "state_dict" not in ckpt:
        raise ConfigError(f"{path}: not a kimi_lab checkpoint (no state_dict)")
    state = {k[len(PREFIX) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(PREFIX)}
    return cfg, state, ckpt


def load_weights(model: torch.nn.Module, path: str | Path, strict: bool = True) -> None:
    """Copy a checkpoint's weights into ``model`` (a KimiK25, plain or sharded with DTensors).

    A sharded folder is read with torch.distributed.checkpoint into the model's own
    tensors, so each process reads only what it holds; a file is memory-mapped.
    """
    path = Path(path)
    _check_exists(path)
    if path.is_dir():
        import torch.distributed.checkpoint as dcp

        from kimi_lab.model.init import expert_rows_as_dtensors

        # FSDP2 gives DTensors; plain expert-parallel shards are wrapped as DTensors of the whole
        # tensor, so each rank reads its own rows.
        own = expert_rows_as_dtensors(model, model.state_dict())
        wanted = {"state_dict": {PREFIX + k: v for k, v in own.items()}}
        try:
            with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
                warnings.filterwarnings("ignore", message=".*load in a single process.*")
                dcp.load(wanted, checkpoint_id=str(path))
        except Exception as exn:
            raise ConfigError(
                f"{path}: the sharded checkpoint does not fit the model ({type(exn).__name__}: {one_line(exn)})"
            ) from None
        return  # dcp.load filled the state dict's tensors, which share the parameters' storage
    _, state, _ = read_checkpoint(path)
    if any(
        hasattr(p, "device_mesh") for p in model.parameters()
    ):  # sharded (FSDP2): each rank keeps its part
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        keys = set_model_state_dict(
            model, state, options=StateDictOptions(full_state_dict=True, strict=False)
        )
        missing, unexpected = list(keys.missing_keys), list(keys.unexpected_keys)
    else:
        missing, unexpected = model.load_state_dict(state, strict=False)
    if strict and (missing or unexpected):
        raise ConfigError(
            f"{path}: the weights do not fit the model "
            f"({len(missing)} missing, {len(unexpected)} unexpected, e.g. {(missing or unexpected)[0]})"
        )


def find_tokenizer(cfg: RunConfig, ckpt_path: Path) -> Path | None:
    """The tokenizer file a checkpoint was trained with: its configured path as given, relative
    to one of the checkpoint's parent folders (a run directory moved with its data), or a
    ``tokenizer.json`` / ``tiktoken.model`` beside the checkpoint or in its folder (``import-hf``
    copies the HF folder's tokenizer into the sharded checkpoint)."""
    given = Path(cfg.data.tokenizer)
    candidates = [given]
    if not given.is_absolute():
        candidates += [p / given for p in ckpt_path.resolve().parents]
    for name in ("tokenizer.json", "tiktoken.model"):
        candidates += [ckpt_path.parent / name, ckpt_path / name]
    return next((c for c in candidates if c.is_file()), None)


def load_tokenizer(cfg: RunConfig, ckpt_path: str | Path) -> Tokenizer:
    """The checkpoint's tokenizer; the project's deterministic BPE is rebuilt when it is missing."""
    from kimi_lab.data.tokenizer import load_or_train

    found = find_tokenizer(cfg, Path(ckpt_path))
    return load_or_train(found or cfg.data.tokenizer, cfg.model.vocab_size)


def build_model(cfg: RunConfig, device: str | torch.device = "cpu") -> KimiK25:
    """An untrained KimiK25 of this config with the torch experts backend (runs everywhere)."""
    from kimi_lab.model.multimodal import KimiK25

    model_cfg = replace(cfg.model, moe=replace(cfg.model.moe, backend=MoEBackend.torch))
    return KimiK25(model_cfg, device_type=torch.device(device).type).to(device)


@dataclass
class LoadedModel:
    config: RunConfig
    model: KimiK25  # eval mode, torch experts backend
    tokenizer: Tokenizer | None
    path: Path


def load_model(path: str | Path, device: str | torch.device = "cpu", tokenizer: bool = True) -> LoadedModel:
    """A checkpoint as a ready model: config, weights, eval mode, and its tokenizer."""
    path = Path(path)
    cfg = read_config(path)
    model = build_model(cfg, device)
    load_weights(model, path)
    model.eval()
    return LoadedModel(cfg, model, load_tokenizer(cfg, path) if tokenizer else None, path)
