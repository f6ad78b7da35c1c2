"""What the routing inspector computes: each token's experts and gate weights, layer by layer.

Text, optionally after an image or a screen recording (a clip: one placeholder run per
chunk of frames, as training and generation build them). Imports torch and the model
only when called, so the dashboard starts without them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

VIDEO_TYPES = ("mp4",)


@st.cache_resource(show_spinner="loading the checkpoint")
def load_model(ckpt: str, mtime: float):  # type: ignore[no-untyped-def]
    from kimi_lab.decode.loading import load_model as load

    loaded = load(ckpt, tokenizer=False)
    return loaded.config, loaded.model


def route(
    ckpt: Path, text: str, media: bytes | None, media_type: str = "png"
) -> tuple[pd.DataFrame | None, str | None]:
    """(one row per token, MoE layer and rank: expert and gate weight; or a problem in one line)."""
    import torch

    from kimi_lab.data.decode import SampleSkip, decode_image, decode_video
    from kimi_lab.data.tokenizer import Tokenizer
    from kimi_lab.data.vision import media_blocks
    from kimi_lab.decode.generation import vision_inputs
    from kimi_lab.decode.loading import find_tokenizer

    run, model = load_model(str(ckpt), ckpt.stat().st_mtime)
    tok_path = find_tokenizer(run, ckpt)
    if tok_path is None:
        return (
            None,
            f"the run's tokenizer {run.data.tokenizer} was not found (start the dashboard where you trained)",
        )
    tok = Tokenizer(tok_path)
    ids = tok.encode(text)
    pieces = [tok.decode([i]) for i in ids]
    kwargs: dict[str, Any] = {}
    if media is not None:
        if not model.has_vision:
            return None, f"model {run.model.name} has no vision tower: images and recordings cannot be routed"
        clip = media_type.lower() in VIDEO_TYPES
        try:
            pixels = decode_video(media) if clip else decode_image(media)
        except SampleSkip as skip:
            return None, f"could not read the {'recording' if clip else 'image'}: {skip.detail}"
        v = run.model.vision
        head, tail = [tok.token_id("<|media_start|>")], [tok.token_id("<|media_end|>")]
        run_ids, run_pieces = [], []
        blocks = media_blocks(pixels, run.data.vision)
        for c, block in enumerate(blocks):
            pad = v.image_token_id if block.kind == "image" else v.video_token_id
            what = "image" if block.kind == "image" else f"chunk {c}"
            run_ids += [*head, *([pad] * block.n_tokens), *tail]
            run_pieces += ["<media_start>", *[f"<{what} {i}>" for i in range(block.n_tokens)], "<media_end>"]
        ids, pieces = run_ids + ids, run_pieces + pieces
        kwargs = vision_inputs(blocks)
    if not ids:
        return None, "type some text first"
    layers = model.language_model.moe_layers
    for layer in layers:
        layer.record_routing = True
    with torch.no_grad():
        model(torch.tensor([ids]), **kwargs)
    rows = []
    for li, layer in enumerate(layers):
        idx, w = layer.last_routing
        for pos in range(len(ids)):
            for k in range(idx.shape[-1]):
                rows.append(
                    {
                        "position": pos,
                        "token": pieces[pos],
                        "moe_layer": li,
                        "rank": k,
                        "expert": int(idx[0, pos, k]),
                        "gate": float(w[0, pos, k]),
                    }
                )
        layer.record_routing = False
    return pd.DataFrame(rows), None
