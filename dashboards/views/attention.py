"""Attention logits: every head's largest pre-softmax logit over steps, and QK-Clip events."""

from __future__ import annotations

import altair as alt
import streamlit as st

from dashboards.runs import find_runs, flatten, layer_name, pick_run, read_table, runs_dir
from kimi_lab import metrics as M

st.title("Attention logits")
runs = find_runs(runs_dir())
run = pick_run(runs, need=M.ATTN_LOGITS_FILE)
if run is None:
    st.info("No run with attn_logits.parquet yet (runs record it unless phase.track_attn_logits=false).")
    st.stop()
logits, problem = read_table(run.path, M.ATTN_LOGITS_FILE)
if problem or logits is None or logits.empty:
    st.warning(problem or "attn_logits.parquet is empty")
    st.stop()

towers = sorted(logits["tower"].unique()) if "tower" in logits else ["language_model"]
tower = st.radio("tower", towers, horizontal=True)
data = logits[logits["tower"] == tower] if "tower" in logits else logits
# The language model's layers as the model numbers them (and the Experts page), MoE layers marked.
first_k_dense = flatten(run.config).get("model.first_k_dense") if tower == "language_model" else None
name = {int(i): layer_name(int(i), first_k_dense) for i in data["layer"].unique()}
layers = sorted(name)
chosen = st.multiselect("layers", layers, default=layers, format_func=name.get)
data = data[data["layer"].isin(chosen)].assign(layer_name=lambda d: d["layer"].map(name))
per_layer = data.groupby(["step", "layer", "layer_name"])["max_logit"].max().reset_index()
order = [name[i] for i in layers]
STEP_AXIS = alt.Axis(format="d", tickMinStep=1)

st.subheader("Per-layer maximum")
st.altair_chart(
    alt.Chart(per_layer)
    .mark_line(point=True)
    .encode(
        x=alt.X("step:Q", axis=STEP_AXIS),
        y="max_logit:Q",
        color=alt.Color("layer_name:N", title="layer", sort=order),
        tooltip=[
            alt.Tooltip("layer_name:N", title="layer"),
            "step",
            alt.Tooltip("max_logit:Q", format=".3f"),
        ],
    ),
    width="stretch",
)
st.subheader("Per head")
if chosen:
    layer = st.selectbox("layer of the heads", chosen, format_func=name.get)
    heads = data[data["layer"] == layer]
    st.altair_chart(
        alt.Chart(heads)
        .mark_line(point=True, opacity=0.8)
        .encode(
            x=alt.X("step:Q", axis=STEP_AXIS),
            y="max_logit:Q",
            color=alt.Color("head:N", title=f"head of layer {name[layer]}", legend=alt.Legend(columns=2)),
            tooltip=["head", "step", alt.Tooltip("max_logit:Q", format=".3f")],
        ),
        width="stretch",
    )
else:
    st.caption("pick a layer above to see its heads")
clips = data[data["clipped"]]
st.subheader("QK-Clip events")
if clips.empty:
    st.caption("no head was clipped in this run")
else:
    counts = clips.groupby("step").size().reset_index(name="clipped heads")
    st.altair_chart(
        alt.Chart(counts).mark_bar().encode(x=alt.X("step:Q", axis=STEP_AXIS), y="clipped heads:Q"),
        width="stretch",
    )
    st.dataframe(
        clips[["step", "layer_name", "head", "max_logit"]].rename(columns={"layer_name": "layer"}),
        hide_index=True,
        width="stretch",
    )
