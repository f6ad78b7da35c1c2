"""Experts: token share per layer and expert, its evolution, imbalance, dead experts, router biases."""

from __future__ import annotations

import altair as alt
import streamlit as st

from dashboards.runs import find_runs, flatten, layer_name, pick_run, read_table, runs_dir
from kimi_lab import metrics as M

st.title("Experts")
runs = find_runs(runs_dir())
run = pick_run(runs, need=M.MOE_LOAD_FILE)
if run is None:
    st.info("No run with expert load yet (moe_load.parquet): train a model with MoE layers.")
    st.stop()
load, problem = read_table(run.path, M.MOE_LOAD_FILE)
if problem or load is None or load.empty:
    st.warning(problem or "moe_load.parquet is empty")
    st.stop()

first_k_dense = flatten(run.config).get("model.first_k_dense")
if isinstance(first_k_dense, int) and load["layer"].min() < first_k_dense:
    load = load.assign(layer=load["layer"] + first_k_dense)  # written before layers were the model's index
st.caption("Layers are numbered as in the model (and on the Attention page); only MoE layers have experts.")
load = load.assign(
    share=load["tokens"] / load.groupby(["step", "layer"])["tokens"].transform("sum").clip(lower=1)
)
steps = sorted(load["step"].unique())
step = st.select_slider("step", options=steps, value=steps[-1])
LAYER = alt.Y("layer:O", title="MoE layer (model layer index)")
STEP_AXIS = alt.Axis(format="d", tickMinStep=1)
at = load[load["step"] == step]

st.subheader(f"Token share at step {step}")
heat = (
    alt.Chart(at)
    .mark_rect()
    .encode(
        x=alt.X("expert:O"),
        y=LAYER,
        color=alt.Color("share:Q", scale=alt.Scale(scheme="viridis")),
        tooltip=[
            "layer",
            "expert",
            "tokens",
            alt.Tooltip("share:Q", format=".3f"),
            alt.Tooltip("bias:Q", format=".4f"),
        ],
    )
)
st.altair_chart(heat, width="stretch")

st.subheader("Load imbalance (max / mean tokens per expert)")
imb = (
    load.groupby(["step", "layer"])["tokens"]
    .agg(lambda t: t.max() / max(t.mean(), 1e-9))
    .reset_index(name="imbalance")
)
st.altair_chart(
    alt.Chart(imb)
    .mark_line(point=True)
    .encode(
        x=alt.X("step:Q", axis=STEP_AXIS),
        y="imbalance:Q",
        color=alt.Color("layer:N", title="MoE layer"),
        tooltip=["layer", "step", alt.Tooltip("imbalance:Q", format=".3f")],
    ),
    width="stretch",
)

st.subheader("Share over steps")
layer = st.selectbox(
    "layer", sorted(load["layer"].unique()), format_func=lambda i: layer_name(i, first_k_dense)
)
evo = load[load["layer"] == layer]
st.altair_chart(
    alt.Chart(evo)
    .mark_area()
    .encode(x=alt.X("step:Q", axis=STEP_AXIS), y=alt.Y("share:Q", stack="normalize"), color="expert:N"),
    width="stretch",
)

st.subheader("Dead and starved experts at this step")
mean = at.groupby("layer")["tokens"].transform("mean")
starved = at[(at["tokens"] == 0) | (at["tokens"] < 0.1 * mean)][["layer", "expert", "tokens", "bias"]]
if starved.empty:
    st.caption("none: every expert got at least a tenth of its layer's mean load")
else:
    st.dataframe(starved.assign(dead=starved["tokens"] == 0), hide_index=True, width="stretch")

st.subheader("Router selection bias at this step")
st.altair_chart(
    alt.Chart(at)
    .mark_rect()
    .encode(
        x="expert:O",
        y=LAYER,
        color=alt.Color("bias:Q", scale=alt.Scale(scheme="redblue", domainMid=0)),
        tooltip=["layer", "expert", "bias"],
    ),
    width="stretch",
)
