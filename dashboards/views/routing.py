"""Routing inspector: which experts each token of your input goes to, layer by layer.

The only page that imports the model (torch): lazily, when you press the button.
"""

from __future__ import annotations

from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from dashboards.runs import find_runs, pick_run, runs_dir
from kimi_lab import metrics as M

PALETTE = [
    "#4c78a8",
    "#f58518",
    "#e45756",
    "#72b7b2",
    "#54a24b",
    "#eeca3b",
    "#b279a2",
    "#ff9da6",
    "#9d755d",
    "#bab0ac",
]


@st.cache_resource(show_spinner="loading the checkpoint")
def load_model(ckpt: str, mtime: float):  # type: ignore[no-untyped-def]
    from kimi_lab.loading import load_model as load

    loaded = load(ckpt, tokenizer=False)
    return loaded.config, loaded.model


def route(ckpt: Path, text: str, image: bytes | None) -> tuple[pd.DataFrame | None, str | None]:
    import torch

    from kimi_lab.data.decode import decode_image
    from kimi_lab.data.tokenizer import Tokenizer
    from kimi_lab.data.vision import image_block
    from kimi_lab.loading import find_tokenizer

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
    kwargs = {}
    if image is not None:
        if not model.has_vision:
            return None, f"model {run.model.name} has no vision tower: images cannot be routed"
        block = image_block(decode_image(image), run.data.vision)
        run_ids = [
            tok.token_id("<|media_start|>"),
            *([run.model.vision.image_token_id] * block.n_tokens),
            tok.token_id("<|media_end|>"),
        ]
        ids = run_ids + ids
        pieces = ["<media_start>", *[f"<image {i}>" for i in range(block.n_tokens)], "<media_end>", *pieces]
        kwargs = {"pixel_values": block.pixel_values, "image_grid_thw": torch.tensor([block.grid_thw])}
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


st.title("Routing inspector")
runs = find_runs(runs_dir())
run = pick_run(runs, need=f"{M.CHECKPOINT_DIR}/{M.LAST_CHECKPOINT}")
if run is None:
    st.info("No run with a checkpoint yet (checkpoints/last.ckpt).")
    st.stop()
st.caption(
    "Pick a checkpoint, type some text (and, for a model with a vision tower, add an image), press Route."
)
ckpts = sorted((run.path / M.CHECKPOINT_DIR).glob("*.ckpt"))
ckpt = st.selectbox("checkpoint", ckpts, format_func=lambda p: p.name, index=len(ckpts) - 1)
text = st.text_area("input text", 'def add(a, b):\n    """Return the sum."""\n    return a + b\n')
upload = st.file_uploader("image (models with a vision tower)", type=["png", "jpg", "jpeg"])
if st.button("Route", type="primary"):
    table, problem = route(ckpt, text, upload.getvalue() if upload else None)
    if problem:
        st.warning(problem)
    elif table is not None:
        st.session_state["routing"] = table
table = st.session_state.get("routing")
if table is not None:
    top = table[table["rank"] == 0]
    grid = top.pivot(index="position", columns="moe_layer", values="expert")
    gates = (
        table.groupby(["position", "moe_layer"])
        .apply(
            lambda g: " ".join(
                f"e{e}:{w:.2f}"
                for e, w in zip(
                    g.sort_values("gate", ascending=False)["expert"],
                    g.sort_values("gate", ascending=False)["gate"],
                )
            ),
            include_groups=False,
        )
        .unstack()
    )
    gates.columns = [f"MoE layer {c}" for c in gates.columns]
    grid.columns = [f"MoE layer {c}" for c in grid.columns]
    gates.insert(0, "token", top.drop_duplicates("position").set_index("position")["token"])
    st.subheader("Chosen experts and gate weights per token (colour: the top expert)")
    styled = gates.style.apply(
        lambda col: (
            [f"background-color: {PALETTE[int(e) % len(PALETTE)]}33" for e in grid[col.name]]
            if col.name in grid
            else [""] * len(col)
        ),
        axis=0,
    )
    st.dataframe(styled, width="stretch")
    st.subheader("Experts this input used, per MoE layer")
    usage = (
        table.groupby(["moe_layer", "expert"])
        .agg(tokens=("position", "count"), gate=("gate", "sum"))
        .reset_index()
    )
    st.altair_chart(
        alt.Chart(usage)
        .mark_rect()
        .encode(
            x="expert:O", y="moe_layer:O", color="tokens:Q", tooltip=["moe_layer", "expert", "tokens", "gate"]
        ),
        width="stretch",
    )
