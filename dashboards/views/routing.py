"""Routing inspector: which experts each token of your input goes to, layer by layer.

Text, with an image or a screen recording (mp4) for a model with a vision tower. The only
page that imports the model (torch): lazily, when you press the button (``dashboards.routing``).
"""

from __future__ import annotations

import altair as alt
import streamlit as st

from dashboards.routing import VIDEO_TYPES, route
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


st.title("Routing inspector")
runs = find_runs(runs_dir())
run = pick_run(runs, need=f"{M.CHECKPOINT_DIR}/{M.LAST_CHECKPOINT}")
if run is None:
    st.info("No run with a checkpoint yet (checkpoints/last.ckpt).")
    st.stop()
st.caption(
    "Pick a checkpoint, type some text (and, for a model with a vision tower, add an image or a screen "
    "recording), press Route."
)
ckpts = sorted((run.path / M.CHECKPOINT_DIR).glob("*.ckpt"))
ckpt = st.selectbox("checkpoint", ckpts, format_func=lambda p: p.name, index=len(ckpts) - 1)
text = st.text_area("input text", 'def add(a, b):\n    """Return the sum."""\n    return a + b\n')
upload = st.file_uploader(
    "image or recording (models with a vision tower)", type=["png", "jpg", "jpeg", *VIDEO_TYPES]
)
if st.button("Route", type="primary"):
    media_type = upload.name.rsplit(".", 1)[-1] if upload else "png"
    table, problem = route(ckpt, text, upload.getvalue() if upload else None, media_type)
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
