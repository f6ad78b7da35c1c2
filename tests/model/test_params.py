"""Parameter counting on the meta device, for every preset up to the real K2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from kimi_lab.config import compose, to_run_config
from kimi_lab.model.params import count_params, count_params_closed_form
from tests.conftest import REPO


@pytest.mark.parametrize("model", ["tiny", "small", "k2"])
def test_module_count_equals_closed_form(model: str) -> None:
    cfg = to_run_config(compose([f"model={model}"])).model
    c = count_params(cfg)
    assert (c.total, c.active) == count_params_closed_form(cfg)


def test_k2_counts() -> None:
    c = count_params(to_run_config(compose(["model=k2"])).model)
    # The released K2 shape gives 1.026T parameters (transformers' DeepSeek-V3 built
    # from the same config agrees exactly, see below); the report rounds to 1.04T.
    assert c.total == 1_026_408_209_408
    assert abs(c.total / 1.04e12 - 1) < 0.015
    # Active: everything but the routed experts, plus 8 of 384 routed experts per layer.
    assert c.active == 32_861_477_888
    assert abs(c.active / 32.6e9 - 1) < 0.01


def test_k2_total_equals_transformers_deepseek_v3_on_meta() -> None:
    pytest.importorskip("transformers")
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    from kimi_lab.model.hf import deepseek_v3_config_kwargs

    cfg = to_run_config(compose(["model=k2"])).model
    with torch.device("meta"):
        hf = DeepseekV3ForCausalLM(DeepseekV3Config(**deepseek_v3_config_kwargs(cfg)))
    assert sum(p.numel() for p in hf.parameters()) == count_params(cfg).total


def test_params_cli_json() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "kimi_lab.cli", "params", "model=k2", "--json"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=True,
    )
    counts = json.loads(out.stdout.strip().splitlines()[-1])
    assert counts == {"total": 1_026_408_209_408, "active": 32_861_477_888}
