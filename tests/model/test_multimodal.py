"""K2.5: MoonViT-3D + projector + K2, against transformers' kimi_k25; export, import, bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from kimi_lab.config import compose, to_run_config
from kimi_lab.config.schema import VisionDataConfig
from kimi_lab.data.vision import VisionBlock, image_block, video_blocks
from kimi_lab.model.multimodal import KimiK25, VisionInputError
from tests.conftest import run_cli

pytest.importorskip("transformers")

VISION_DATA = VisionDataConfig(max_patches=144)


def tiny_vl() -> KimiK25:
    torch.manual_seed(0)
    model = KimiK25(to_run_config(compose(["model=tiny-vl"])).model).eval()
    with torch.no_grad():  # non-trivial norms, biases and selection biases, so each mapping is tested
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
        for layer in model.language_model.moe_layers:
            layer.router.expert_bias.uniform_(-0.05, 0.05)
    return model


def _rgb(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _run(block: VisionBlock, token: int) -> list[int]:
    return [16, *([token] * block.n_tokens), 17]  # <|media_start|> placeholders <|media_end|>


def inputs(model: KimiK25, images: list[VisionBlock], videos: list[VisionBlock]) -> dict[str, torch.Tensor]:
    v = model.cfg.vision
    ids = [100, 101]
    for i, b in enumerate(images):
        ids += [102 + i, *_run(b, v.image_token_id)]
    for b in videos:
        ids += _run(b, v.video_token_id)
    ids += [120, 121, 122]
    out = {"input_ids": torch.tensor([ids])}
    if images:
        out["pixel_values"] = torch.cat([b.pixel_values for b in images])
        out["image_grid_thw"] = torch.tensor([b.grid_thw for b in images])
    if videos:
        out["pixel_values_videos"] = torch.cat([b.pixel_values for b in videos])
        out["video_grid_thw"] = torch.tensor([b.grid_thw for b in videos])
    return out


def cases() -> dict[str, tuple[list[VisionBlock], list[VisionBlock]]]:
    two_images = [image_block(_rgb(50, 90, 1), VISION_DATA), image_block(_rgb(70, 30, 2), VISION_DATA)]
    video = video_blocks(np.stack([_rgb(40, 60, 10 + t) for t in range(8)]), VISION_DATA)
    return {"text": ([], []), "two_images": (two_images, []), "video_8_frames": ([], video)}


def logits(model: torch.nn.Module, batch: dict[str, torch.Tensor], hf: bool = False) -> torch.Tensor:
    with torch.no_grad():
        if hf:
            return model(**batch).logits
        return model(**batch).logits


@pytest.mark.parametrize("case", ["text", "two_images", "video_8_frames"])
def test_logits_match_transformers_kimi_k25(case: str) -> None:
    from kimi_lab.hf.in_memory import from_transformers, to_transformers

    model = tiny_vl()
    images, videos = cases()[case]
    if case == "two_images":
        assert images[0].grid_thw != images[1].grid_thw and all(
            g[1] != g[2] for g in (b.grid_thw for b in images)
        )
    if case == "video_8_frames":
        assert [b.grid_thw[0] for b in videos] == [4, 4]
    batch = inputs(model, images, videos)
    ours = logits(model, batch)
    hf = to_transformers(model)
    theirs = logits(hf, batch, hf=True)
    assert (ours - theirs).abs().max() < 1e-4
    back = from_transformers(hf)  # and back, without loss
    assert (logits(back, batch) - ours).abs().max() == 0


def test_export_and_import_through_the_cli(tmp_path: Path) -> None:
    from transformers import Kimi_K25ForConditionalGeneration

    model = tiny_vl()
    run = to_run_config(compose(["model=tiny-vl"]))
    from omegaconf import OmegaConf

    ckpt = tmp_path / "ours.ckpt"
    torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            "hyper_parameters": {
                "config": OmegaConf.to_container(OmegaConf.structured(run), enum_to_str=True)
            },
        },
        ckpt,
    )
    res = run_cli("export-hf", str(ckpt), "hf_out", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads((tmp_path / "hf_out" / "config.json").read_text())["model_type"] == "kimi_k25"
    assert (tmp_path / "hf_out" / "model.safetensors.index.json").is_file()  # shards + index, streamed
    hf = Kimi_K25ForConditionalGeneration.from_pretrained(tmp_path / "hf_out", dtype=torch.float32).eval()
    images, videos = cases()["two_images"][0], cases()["video_8_frames"][1]
    batch = inputs(model, images, videos)
    ours = logits(model, batch)
    assert (logits(hf, batch, hf=True) - ours).abs().max() < 1e-4

    res = run_cli("import-hf", "hf_out", "back.ckpt", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "phase.init_from=" in res.stdout
    from kimi_lab.decode.loading import read_checkpoint

    cfg, state, _ = read_checkpoint(tmp_path / "back.ckpt")
    back = KimiK25(cfg.model)
    back.load_state_dict(state)
    assert (logits(back.eval(), batch) - ours).abs().max() < 1e-5


def test_import_of_a_random_transformers_checkpoint_with_interleaved_rope(tmp_path: Path) -> None:
    """A checkpoint made by transformers itself, with DeepSeek's interleaved RoPE layout."""
    from transformers import Kimi_K25Config, Kimi_K25ForConditionalGeneration

    from kimi_lab.decode.loading import read_checkpoint
    from kimi_lab.hf.config import kimi_k25_config_kwargs
    from kimi_lab.hf.importer import import_hf

    cfg = to_run_config(compose(["model=tiny-vl"])).model
    kwargs = kimi_k25_config_kwargs(cfg)
    kwargs["text_config"]["rope_interleave"] = True
    kwargs["text_config"]["q_lora_rank"] = 24  # a low-rank query too
    torch.manual_seed(1)
    hf = Kimi_K25ForConditionalGeneration(Kimi_K25Config(**kwargs)).eval()
    with torch.no_grad():
        for layer in hf.model.language_model.layers[1:]:
            layer.mlp.gate.e_score_correction_bias.uniform_(-0.05, 0.05)
    hf.save_pretrained(tmp_path / "theirs")
    out, imported = import_hf(tmp_path / "theirs", tmp_path / "ours.ckpt")
    assert imported.attention.q_lora_rank == 24
    run, state, _ = read_checkpoint(out)
    ours = KimiK25(run.model).eval()
    ours.load_state_dict(state)
    torch.testing.assert_close(
        ours.language_model.moe_layers[0].router.expert_bias,
        hf.model.language_model.layers[1].mlp.gate.e_score_correction_bias,
    )
    batch = inputs(ours, cases()["two_images"][0], cases()["video_8_frames"][1])
    assert (logits(ours, batch) - logits(hf, batch, hf=True)).abs().max() < 1e-4


def test_changing_one_image_leaves_the_others_unchanged() -> None:
    model = tiny_vl()
    a = [
        image_block(_rgb(50, 90, 1), VISION_DATA),
        image_block(_rgb(70, 30, 2), VISION_DATA),
        image_block(_rgb(40, 40, 3), VISION_DATA),
    ]
    b = [a[0], image_block(_rgb(70, 30, 99), VISION_DATA), a[2]]  # same size, other pixels
    with torch.no_grad():
        ea = model.projector(
            model.vision_tower(torch.cat([x.pixel_values for x in a]), torch.tensor([x.grid_thw for x in a]))
        )
        eb = model.projector(
            model.vision_tower(torch.cat([x.pixel_values for x in b]), torch.tensor([x.grid_thw for x in b]))
        )
    n0, n1 = a[0].n_tokens, a[1].n_tokens
    torch.testing.assert_close(ea[:n0], eb[:n0], rtol=0, atol=1e-6)
    torch.testing.assert_close(ea[n0 + n1 :], eb[n0 + n1 :], rtol=0, atol=1e-6)
    assert not torch.allclose(ea[n0 : n0 + n1], eb[n0 : n0 + n1])


def test_a_four_frame_chunk_costs_one_frame_of_tokens() -> None:
    clip = np.stack([_rgb(56, 84, t) for t in range(4)])
    (chunk,) = video_blocks(clip, VISION_DATA)
    still = image_block(clip[0], VISION_DATA)
    assert chunk.grid_thw == (4, 4, 6) and chunk.n_tokens == still.n_tokens == 6
    model = tiny_vl()
    with torch.no_grad():
        pooled = model.vision_tower(chunk.pixel_values, torch.tensor([chunk.grid_thw]))
    assert pooled.shape == (6, 4, 32)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("grid_mismatch", "grids describe 32 patches but the pixels hold 31"),
        ("empty_grid", "image 0: grid (t=1, h=0, w=8) is empty"),
        ("zero_frames", "video chunk 0: grid (t=0, h=4, w=6) is empty"),
        ("extra_placeholders", "10 image placeholder tokens but the 1 image(s) give 8 embeddings"),
        ("odd_grid", "not a multiple of the 2x2 merge"),
    ],
)
def test_bad_vision_inputs_fail_before_the_forward(change: str, message: str) -> None:
    model = tiny_vl()
    image = image_block(_rgb(50, 90, 1), VISION_DATA)
    clip = video_blocks(np.stack([_rgb(40, 60, t) for t in range(4)]), VISION_DATA)
    batch = inputs(model, [image], clip)
    if change == "grid_mismatch":
        batch["pixel_values"] = batch["pixel_values"][:-1]
    elif change == "empty_grid":
        batch["image_grid_thw"] = torch.tensor([[1, 0, 8]])
    elif change == "zero_frames":
        batch["video_grid_thw"] = torch.tensor([[0, 4, 6]])
    elif change == "extra_placeholders":
        batch["input_ids"] = torch.cat(
            [batch["input_ids"], torch.full((1, 2), model.cfg.vision.image_token_id)], 1
        )
    else:
        batch["image_grid_thw"] = torch.tensor([[1, 4, 7]])
        batch["pixel_values"] = batch["pixel_values"][:28]
    calls = []
    model.vision_tower.register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises(VisionInputError, match=re.escape(message)):
        model(**batch)
    assert not calls  # raised before any vision work


def test_an_image_smaller_than_a_patch_is_a_named_skip(tiny_tokenizer: Path) -> None:
    import io

    from PIL import Image

    from kimi_lab.data.decode import Decoder, SampleSkip
    from kimi_lab.data.tokenizer import Tokenizer

    png = io.BytesIO()
    Image.new("RGB", (10, 40), "red").save(png, format="PNG")
    sample = {
        "__key__": "tiny-image",
        "__url__": "shard.tar",
        "png": png.getvalue(),
        "svg": b"<svg/>",
        "json": json.dumps(
            {"schema_version": 1, "modality": "image", "source": "t", "provenance": {}}
        ).encode(),
    }
    with pytest.raises(SampleSkip) as err:
        Decoder(Tokenizer(tiny_tokenizer), VISION_DATA)(sample)
    assert err.value.reason == "bad_image" and "10x40 pixels is smaller than one 14x14 patch" in str(
        err.value
    )
