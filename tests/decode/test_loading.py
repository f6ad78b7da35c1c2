"""The one checkpoint loader: every consumer gets the same ready model from a checkpoint."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from kimi_lab.config import compose, to_run_config
from kimi_lab.decode.loading import build_model, load_model, load_weights, read_checkpoint, read_config
from kimi_lab.errors import ConfigError


def _save(tmp_path: Path, tokenizer: str, seed: int = 0, **extra: object) -> tuple[Path, dict]:
    """A checkpoint file laid out as the phases write it (config in hyper_parameters, ``model.`` keys)."""
    dcfg = compose(["model=tiny", f"data.tokenizer={tokenizer}"])
    cfg = to_run_config(dcfg)
    torch.manual_seed(seed)
    model = build_model(cfg)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ckpt = {
        "hyper_parameters": {"config": OmegaConf.to_container(dcfg, resolve=True)},
        "state_dict": {f"model.{k}": v for k, v in state.items()},
        **extra,
    }
    path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True)
    torch.save(ckpt, path)
    return path, state


def test_load_model_gives_the_saved_weights_in_eval_mode(tiny_tokenizer: Path, tmp_path: Path) -> None:
    path, state = _save(tmp_path, str(tiny_tokenizer), seed=3)
    loaded = load_model(path)
    assert not loaded.model.training
    got = loaded.model.state_dict()
    assert got.keys() == state.keys() and all(torch.equal(got[k], state[k]) for k in state)
    assert loaded.config.model.name == "tiny" and loaded.config == read_config(path)
    assert loaded.tokenizer is not None and loaded.tokenizer.path == tiny_tokenizer


def test_the_tokenizer_is_found_beside_a_moved_run(
    tiny_tokenizer: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Trained with a cwd-relative tokenizer path; loaded later from another folder.
    path, _ = _save(tmp_path, "data/tok.json")
    (tmp_path / "data").mkdir()
    shutil.copy(tiny_tokenizer, tmp_path / "data" / "tok.json")
    monkeypatch.chdir(tmp_path / "run")
    loaded = load_model(path)
    assert loaded.tokenizer is not None and loaded.tokenizer.path == tmp_path / "data" / "tok.json"


def test_bad_checkpoints_are_one_line_errors(tiny_tokenizer: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such checkpoint"):
        load_model(tmp_path / "missing.ckpt")
    broken = tmp_path / "broken.ckpt"
    good, _ = _save(tmp_path, str(tiny_tokenizer))
    broken.write_bytes(good.read_bytes()[:1000])  # a killed copy
    with pytest.raises(ConfigError, match="not a readable checkpoint"):
        read_config(broken)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ConfigError, match="not a kimi_lab checkpoint"):
        read_checkpoint(foreign)


def test_weights_that_do_not_fit_are_refused(tiny_tokenizer: Path, tmp_path: Path) -> None:
    path, _ = _save(tmp_path, str(tiny_tokenizer))
    bigger = to_run_config(compose(["model=tiny", "model.n_layers=3"]))
    with pytest.raises(ConfigError, match="do not fit the model"):
        load_weights(build_model(bigger), path)
