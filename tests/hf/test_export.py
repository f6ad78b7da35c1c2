"""Streaming export: capped shards + an index transformers loads; K2.5's INT4 experts round-trip exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import run_cli
from tests.hf import released as R

pytest.importorskip("transformers")
pytest.importorskip("compressed_tensors")


def tiny_checkpoint(path: Path, model: str = "tiny", seed: int = 0) -> torch.nn.Module:
    from kimi_lab.config import compose, to_run_config
    from kimi_lab.model.multimodal import KimiK25

    run = to_run_config(compose([f"model={model}"]))
    torch.manual_seed(seed)
    m = KimiK25(run.model).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
        for layer in m.language_model.moe_layers:
            layer.router.expert_bias.uniform_(-0.05, 0.05)
    config = OmegaConf.to_container(OmegaConf.structured(run), enum_to_str=True)
    state = {f"model.{k}": v for k, v in m.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": {"config": config}}, path)
    return m


def test_export_writes_capped_shards_and_an_index_transformers_loads(tmp_path: Path) -> None:
    from transformers import DeepseekV3ForCausalLM

    model = tiny_checkpoint(tmp_path / "ours.ckpt")
    cap = 40_000
    res = run_cli("export-hf", "ours.ckpt", "hf", "--shard-gb", str(cap / 2**30), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    out = tmp_path / "hf"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 5 and set(index["weight_map"].values()) == {s.name for s in shards}
    for shard in shards:  # a shard exceeds the cap only when one tensor alone does
        names = [n for n, f in index["weight_map"].items() if f == shard.name]
        assert shard.stat().st_size <= cap + 4096 or len(names) == 1
    assert "model.layers.1.mlp.experts.7.down_proj.weight" in index["weight_map"]  # as K2 ships them
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "deepseek_v3" and config["rope_interleave"] is True

    hf = DeepseekV3ForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (hf(input_ids=ids).logits - model(input_ids=ids).logits).abs().max() < 1e-4


def test_int4_export_is_k25s_format_and_import_reproduces_the_quantized_weights(tmp_path: Path) -> None:
    from safetensors import safe_open

    from kimi_lab.decode.loading import read_checkpoint
    from kimi_lab.hf.importer import import_hf

    tiny_checkpoint(tmp_path / "ours.ckpt")
    res = run_cli("export-hf", "ours.ckpt", "int4", "--quantize", "int4", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    out = tmp_path / "int4"
    config = json.loads((out / "config.json").read_text())
    q = config["quantization_config"]
    assert q["quant_method"] == "compressed-tensors" and q["format"] == "pack-quantized"
    assert q["config_groups"]["group_0"]["weights"] == R.INT4_SCHEME
    assert set(R.int4_config()["ignore"]) <= set(q["ignore"])

    index = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    exported = {}
    for name, file in index.items():
        with safe_open(str(out / file), "pt") as f:
            exported[name] = f.get_tensor(name)
    stem = "model.layers.1.mlp.experts.5.down_proj."
    assert exported[stem + "weight_packed"].dtype == torch.int32
    assert tuple(exported[stem + "weight_packed"].shape) == (64, 32 // 8)  # (out, in / 8): K2.5's shapes
    assert exported[stem + "weight_scale"].dtype == torch.bfloat16
    assert exported[stem + "weight_shape"].tolist() == [64, 32]
    assert (
        exported["model.layers.1.self_attn.kv_b_proj.weight"].dtype == torch.float32
    )  # only experts in INT4

    import_hf(out, tmp_path / "back")
    _, back, _ = read_checkpoint(tmp_path / "back")
    _, original, _ = read_checkpoint(tmp_path / "ours.ckpt")
    for e in range(8):
        for ours, theirs, transpose in (
            ("w1", "gate_proj", False),
            ("w3", "up_proj", False),
            ("w2", "down_proj", True),
        ):
            s = f"model.layers.1.mlp.experts.{e}.{theirs}."
            packed = {k: exported[s + k] for k in ("weight_packed", "weight_scale", "weight_shape")}
            want = R.int4_decompress(packed)  # compressed-tensors' own decompression
            got = back[f"language_model.layers.1.ffn.experts.{ours}"][e]
            assert torch.equal(got.T if transpose else got, want)  # bit for bit
    for name, t in original.items():
        if ".experts." not in name:
            assert torch.equal(back[name], t), name  # the rest is exact at float32


def test_transformers_reads_the_int4_export_through_compressed_tensors(tmp_path: Path) -> None:
    """The ecosystem's reader of K2.5's format (transformers + compressed-tensors, on CPU) gets the
    same model as kimi_lab's import, up to its bf16 decompression."""
    from transformers import DeepseekV3ForCausalLM

    from kimi_lab.decode.loading import load_model
    from kimi_lab.hf.exporter import export_hf
    from kimi_lab.hf.importer import import_hf

    model = tiny_checkpoint(tmp_path / "ours.ckpt")
    export_hf(tmp_path / "ours.ckpt", tmp_path / "int4", quantize="int4")
    import_hf(tmp_path / "int4", tmp_path / "back")
    theirs = DeepseekV3ForCausalLM.from_pretrained(tmp_path / "int4", dtype=torch.float32).eval()
    ours = load_model(tmp_path / "back", tokenizer=False).model
    ids = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b, unquantized = (
            theirs(input_ids=ids).logits,
            ours(input_ids=ids).logits,
            model(input_ids=ids).logits,
        )
    assert (a - b).abs().max() < 2e-3 < (b - unquantized).abs().max()


def test_export_streams_from_a_sharded_checkpoint(tmp_path: Path) -> None:
    """An imported (sharded) checkpoint exports slab by slab and imports back unchanged."""
    from kimi_lab.decode.loading import read_checkpoint
    from kimi_lab.hf.exporter import export_hf
    from kimi_lab.hf.importer import import_hf

    tiny_checkpoint(tmp_path / "ours.ckpt", model="tiny-vl")
    export_hf(tmp_path / "ours.ckpt", tmp_path / "hf1")
    import_hf(tmp_path / "hf1", tmp_path / "sharded")
    export_hf(tmp_path / "sharded", tmp_path / "hf2", shard_bytes=50_000, slab_bytes=4096)
    import_hf(tmp_path / "hf2", tmp_path / "again")
    _, a, _ = read_checkpoint(tmp_path / "ours.ckpt")
    _, b, _ = read_checkpoint(tmp_path / "again")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    config = json.loads((tmp_path / "hf2" / "config.json").read_text())
    assert config["vision_config"]["vt_hidden_size"] == 32 and config["media_placeholder_token_id"] == 14


def test_export_refuses_what_it_cannot_write(tmp_path: Path) -> None:
    from kimi_lab.errors import KimiLabError
    from kimi_lab.hf.exporter import export_hf

    tiny_checkpoint(tmp_path / "ours.ckpt")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(KimiLabError, match="never overwrites"):
        export_hf(tmp_path / "ours.ckpt", tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    with pytest.raises(KimiLabError, match="--quantize int8 is not supported"):
        export_hf(tmp_path / "ours.ckpt", tmp_path / "other", quantize="int8")
    assert not (tmp_path / "other").exists()
