"""Streaming import of the released formats: FP8 K2 and INT4 K2.5 give their dequantized weights' logits."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import run_cli
from tests.hf import released as R
from tests.hf import synthetic as S

pytest.importorskip("transformers")
pytest.importorskip("compressed_tensors")


def k2_folder(tmp_path: Path, shard_bytes: int = 60_000) -> tuple[Path, torch.nn.Module, dict]:
    from transformers import DeepseekV3ForCausalLM

    k2 = R.k2_text_config()
    hf = R.randomise(DeepseekV3ForCausalLM(R.transformers_text_config(k2)), 0)
    original = {k: v.clone() for k, v in hf.state_dict().items()}
    expect = R.write_k2(tmp_path / "k2", hf, k2, shard_bytes)
    R.load_released_into(hf, expect, "k2")  # the oracle: transformers with the dequantized weights
    return tmp_path / "k2", hf, original


def k25_folder(tmp_path: Path) -> tuple[Path, torch.nn.Module, dict]:
    from transformers import Kimi_K25Config, Kimi_K25ForConditionalGeneration

    from kimi_lab.config import compose, to_run_config
    from kimi_lab.hf.config import kimi_k25_config_kwargs

    vocab = S.write_tiktoken(tmp_path / "k25")  # K2.5 ships its tokenizer beside the weights
    media_pad = vocab - 256 + 21  # <|media_pad|>: the image placeholder
    kw = kimi_k25_config_kwargs(to_run_config(compose(["model=tiny-vl"])).model)
    text = R.k2_text_config(num_hidden_layers=2, vocab_size=vocab)
    kw["text_config"] = R.transformers_text_config(text).to_dict()
    kw["image_token_id"] = media_pad
    config = Kimi_K25Config(**kw)
    config._attn_implementation = "eager"
    hf = R.randomise(Kimi_K25ForConditionalGeneration(config), 1)
    original = {k: v.clone() for k, v in hf.state_dict().items()}
    expect = R.write_k25(tmp_path / "k25", hf, R.k25_config(text, config.vision_config, media_pad), 60_000)
    R.load_released_into(hf, expect, "k25")
    return tmp_path / "k25", hf, original


def test_fp8_k2_imports_with_the_logits_of_its_dequantized_weights(tmp_path: Path) -> None:
    from kimi_lab.decode.loading import load_model
    from kimi_lab.tracking.checkpoint_io import is_sharded_checkpoint

    folder, oracle, original = k2_folder(tmp_path)
    assert len(list(folder.glob("*.safetensors"))) >= 4
    res = run_cli("import-hf", "k2", "ours", "--file-mb", "0", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "phase.init_from=" in res.stdout
    out = tmp_path / "ours"
    assert is_sharded_checkpoint(out) and len(list(out.glob("*.distcp"))) > 10  # one file per chunk here

    model = load_model(out, tokenizer=False).model
    assert model.cfg.attention.rope.factor == 4.0 and model.cfg.moe.routed_scaling_factor == 2.827
    ids = torch.randint(0, 512, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = model(input_ids=ids).logits, oracle(input_ids=ids).logits
        oracle.load_state_dict(original)  # the unquantized model differs: the scales mattered
        unquantized = oracle(input_ids=ids).logits
    assert (ours - theirs).abs().max() < 1e-4
    assert (unquantized - theirs).abs().max() > 1e-3

    # big matrices go in slabs of rows (FP8 ones in whole blocks of rows): the same checkpoint
    from kimi_lab.decode.loading import read_checkpoint
    from kimi_lab.hf.importer import import_hf

    import_hf(folder, tmp_path / "slabs", slab_bytes=2000)
    (_, a, _), (_, b, _) = read_checkpoint(out), read_checkpoint(tmp_path / "slabs")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_int4_k25_imports_with_the_logits_of_its_dequantized_weights(tmp_path: Path) -> None:
    from kimi_lab.decode.loading import load_model
    from kimi_lab.train import check_tokenizer_matches
    from tests.model.test_multimodal import cases, inputs

    folder, oracle, original = k25_folder(tmp_path)
    index = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    assert "language_model.model.layers.1.mlp.experts.7.down_proj.weight_packed" in index
    assert "vision_tower.encoder.blocks.1.wqkv.weight" in index
    res = run_cli("import-hf", "k25", "ours", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]

    loaded = load_model(tmp_path / "ours")
    model, tok = loaded.model, loaded.tokenizer
    # the placeholders are the released tokenizer's: <|media_pad|> for images, a reserved id for video
    assert model.cfg.vision.image_token_id == tok.token_id("<|image_pad|>") == tok.token_id("<|media_pad|>")
    assert model.cfg.vision.video_token_id == tok.token_id("<|video_pad|>")
    check_tokenizer_matches(replace(loaded.config, data=replace(loaded.config.data, tokenizer=str(tok.path))))
    batch = inputs(model, cases()["two_images"][0], [])
    with torch.no_grad():
        ours, theirs = model(**batch).logits, oracle(**batch).logits
        oracle.load_state_dict(original)
        unquantized = oracle(**batch).logits
    assert (ours - theirs).abs().max() < 1e-4
    assert (unquantized - theirs).abs().max() > 1e-3


def test_the_synthetic_k25_layout_is_what_transformers_reads_as_k25(tmp_path: Path) -> None:
    """The helper's hand-written release names (wqkv with interleaved q/k, norm0/1, fc0/1, proj.0/2)
    are checked against transformers' own K2.5 conversion, on an unquantized copy."""
    from transformers import Kimi_K25ForConditionalGeneration

    from tests.model.test_multimodal import cases, inputs

    _, oracle, original = k25_folder(tmp_path)
    plain = tmp_path / "plain"
    plain.mkdir()
    state = oracle.state_dict()
    vc = oracle.config.vision_config
    tensors = R.lm_released(original, "model.language_model.", "language_model.model.")
    tensors["language_model.lm_head.weight"] = original["lm_head.weight"]
    tensors.update(R.vision_released(original, vc.num_hidden_layers, vc.num_attention_heads))
    R.write_shards(tensors, plain, 80_000)
    config = oracle.config.to_dict()
    config.pop("quantization_config", None)
    (plain / "config.json").write_text(json.dumps(config))
    loaded = Kimi_K25ForConditionalGeneration.from_pretrained(plain, dtype=torch.float32).eval()
    oracle.load_state_dict(original)
    ids = SimpleNamespace(
        image_token_id=oracle.config.image_token_id, video_token_id=oracle.config.video_token_id
    )
    batch = inputs(SimpleNamespace(cfg=SimpleNamespace(vision=ids)), cases()["two_images"][0], [])
    with torch.no_grad():
        assert (loaded(**batch).logits - oracle(**batch).logits).abs().max() < 1e-5
    assert set(state) == set(original)


@pytest.fixture(scope="module")
def k2_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One synthetic FP8 K2 folder; tests that damage it take a copy."""
    folder, _, _ = k2_folder(tmp_path_factory.mktemp("k2src"))
    return folder


def damaged(k2_source: Path, tmp_path: Path, damage: str) -> Path:
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "k2"
    shutil.copytree(k2_source, folder)
    shards = sorted(folder.glob("*.safetensors"))
    index = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    if damage == "missing_shard":
        shards[1].unlink()
    elif damage == "corrupt_shard":
        shards[2].write_bytes(shards[2].read_bytes()[:100])
    elif damage == "bad_scale":
        name = "model.layers.1.self_attn.q_b_proj.weight_scale_inv"
        tensors = load_file(folder / index[name])
        tensors[name] = tensors[name][:1]
        save_file(tensors, folder / index[name])
    elif damage == "no_scale":
        config = json.loads((folder / "model.safetensors.index.json").read_text())
        del config["weight_map"]["model.layers.2.mlp.experts.3.up_proj.weight_scale_inv"]
        (folder / "model.safetensors.index.json").write_text(json.dumps(config))
    elif damage == "missing_tensor":
        config = json.loads((folder / "model.safetensors.index.json").read_text())
        del config["weight_map"]["model.layers.2.mlp.experts.3.up_proj.weight"]
        (folder / "model.safetensors.index.json").write_text(json.dumps(config))
    elif damage == "model_type":
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(
            json.dumps({**config, "model_type": "llama", "architectures": []})
        )
    elif damage == "group_routing":
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "n_group": 8, "topk_group": 4}))
    return folder


@pytest.mark.parametrize(
    "damage, message",
    [
        ("missing_shard", "the index names this shard but it is missing"),
        ("corrupt_shard", "not a readable safetensors shard"),
        ("bad_scale", "weight_scale_inv is (1, 2) but a 48x24 weight in 16x16 blocks needs (3, 2)"),
        ("no_scale", "is FP8 but has no weight_scale_inv"),
        ("missing_tensor", "the checkpoint lacks model.layers.2.mlp.experts.3.up_proj"),
        ("model_type", "model_type='llama' is not supported"),
        ("group_routing", "group-limited routing"),
    ],
)
def test_bad_input_is_a_clear_error_and_leaves_no_checkpoint(
    k2_source: Path, tmp_path: Path, damage: str, message: str
) -> None:
    from kimi_lab.errors import KimiLabError
    from kimi_lab.hf.importer import import_hf

    folder = damaged(k2_source, tmp_path, damage)
    with pytest.raises(KimiLabError, match=re.escape(message)):
        import_hf(folder, tmp_path / "ours")
    assert not (tmp_path / "ours").exists()
    assert not list(tmp_path.glob(".ours.tmp-*"))  # no half-written folder left behind


def test_the_command_says_one_line_exits_2_and_never_overwrites(k2_source: Path, tmp_path: Path) -> None:
    folder = damaged(k2_source, tmp_path, "missing_shard")
    res = run_cli("import-hf", str(folder), "ours", cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("error: ") and not (tmp_path / "ours").exists()
    (tmp_path / "ours").mkdir()
    (tmp_path / "ours" / "keep.txt").write_text("mine")
    from kimi_lab.errors import KimiLabError
    from kimi_lab.hf.importer import import_hf

    with pytest.raises(KimiLabError, match="never overwrites"):
        import_hf(k2_source, tmp_path / "ours")
    assert (tmp_path / "ours" / "keep.txt").read_text() == "mine"


def test_an_imported_k2_tokenizes_samples_serves_and_trains_with_its_own_tokenizer(
    tmp_path: Path, tiny_overrides: list[str]
) -> None:
    from kimi_lab.data.tiktoken_tokenizer import TiktokenTokenizer
    from kimi_lab.decode.generation import DecodeOptions, Prompt, generate
    from kimi_lab.decode.loading import load_model
    from kimi_lab.serving.serve import ChatService
    from kimi_lab.swarm.checkpoint_policy import load_checkpoint_policy

    folder = tmp_path / "k2"
    vocab = S.write_tiktoken(folder)  # the released tokenizer's format, small
    config = R.k2_text_config(vocab_size=vocab)
    S.write_synthetic_k2(folder, config, shard_bytes=100_000, block=16)
    res = run_cli("import-hf", "k2", "ours", "--dtype", "bfloat16", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    out = tmp_path / "ours"
    assert (out / "tiktoken.model").is_file() and (out / "tokenizer_config.json").is_file()

    loaded = load_model(out)
    tok = loaded.tokenizer
    assert isinstance(tok, TiktokenTokenizer) and tok.vocab_size == loaded.config.model.vocab_size == vocab
    prompt = tok.encode("the cat sat on")
    options = DecodeOptions(6, (tok.eos_id,), tok.pad_id, generator=torch.Generator().manual_seed(0))
    gen = generate(loaded.model, [Prompt(prompt)], options)
    assert len(gen[0].tokens) >= 1 and isinstance(tok.decode(prompt + gen[0].tokens), str)

    cfg, policy = load_checkpoint_policy(str(out))  # what `kimi-lab serve` loads
    chat = ChatService(policy.model, policy.tok, "imported", cfg.model.max_seq_len)
    reply = chat.complete({"messages": [{"role": "user", "content": "hi there"}], "max_tokens": 4, "seed": 0})
    assert isinstance(reply["choices"][0]["message"]["content"], str)

    overrides = [o for o in tiny_overrides if not o.startswith(("model=", "data.tokenizer="))]
    res = run_cli(
        "train",
        *overrides,
        f"phase.init_from={out}",
        f"data.tokenizer={out / 'tiktoken.model'}",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "phase.schedule.warmup_steps=1",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    run_dir = Path(res.stdout.strip().splitlines()[-1].removeprefix("run directory: "))
    log = (run_dir / "train.log").read_text()
    assert f"initialised from {out}" in log and "imported-k2" in log
