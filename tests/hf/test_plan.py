"""``kimi-lab params HF_DIR`` / ``import-hf --dry-run``: the real K2.5 sized from config.json + index."""

from __future__ import annotations

import json
from pathlib import Path

from kimi_lab.hf.plan import format_plan
from tests.conftest import run_cli
from tests.hf import synthetic as S


def test_the_released_k25_is_sized_from_its_config_and_index_alone(tmp_path: Path) -> None:
    folder = tmp_path / "Kimi-K2.5"  # no weights at all: only what the plan may read
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(S.k25_release_config()))
    index = S.k25_release_index()
    assert len(index) == 208_550  # as the release's index lists
    total = 554_270_000_000
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": index})
    )
    res = run_cli("params", str(folder), "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    plan = json.loads(res.stdout)
    m, s, o, mem = plan["model"], plan["source"], plan["output"], plan["memory"]
    assert m["model_type"] == "kimi_k25" and m["layers"] == 61 and m["routed_experts"] == 384
    # the K2 language model (1,026,408,209,408, as PAPER_NOTES counts it) + MoonViT-3D + projector
    assert m["total_params"] == 1_026_408_209_408 + 416_866_032 + 54_277_888
    assert s["shards"] == 64 and s["quantized_weights"] == {"int4 pack-quantized": 60 * 384 * 3}
    assert s["not_imported"] == 0
    stored = m["total_params"] + 60 * 384  # + the routers' selection biases (buffers)
    assert o["bytes"]["bfloat16"] == 2 * stored and o["bytes"]["float32"] == 4 * stored
    assert mem["largest_chunk_bytes"] <= 256 << 20  # big matrices go in slabs
    assert mem["peak_bytes_estimate"] < 4e9  # a few GB, not the terabytes of the model

    text = format_plan(plan)  # what `kimi-lab import-hf DIR --dry-run` prints
    assert "4,107.5 GB at float32" in text and "2,053.8 GB at --dtype bfloat16" in text
