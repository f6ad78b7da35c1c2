"""Attention logits: every head's largest pre-softmax logit over steps, and QK-Clip events."""

from __future__ import annotations

import altair as alt
import streamlit as st

from dashboards.runs import find_runs, pick_run, read_table, runs_dir
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
layers = sorted(data["layer"].unique())
chosen = st.multiselect("layers", layers, default=layers)
data = data[data["layer"].isin(chosen)].assign(
    head_id=lambda d: "L" + d["layer"].astype(str) + "/H" + d["head"].astype(str)
)
per_layer = data.groupby(["step", "layer"])["max_logit"].max().reset_index()

st.subheader("Per-layer maximum")
st.altair_chart(
    alt.Chart(per_layer).mark_line().encode(x="step:Q", y="max_logit:Q", color="layer:N"), width="stretch"
)
st.subheader("Per head")
st.altair_chart(
    alt.Chart(data)
    .mark_line(opacity=0.6)
    .encode(
        x="step:Q",
        y="max_logit:Q",
        color=alt.Color("head_id:N", legend=None),
        tooltip=["head_id", "step", "max_logit"],
    ),
    width="stretch",
)
clips = data[data["clipped"]]
st.subheader("QK-Clip events")
if clips.empty:
    st.caption("no head was clipped in this run")
else:
    counts = clips.groupby("step").size().reset_index(name="clipped heads")
    st.altair_chart(alt.Chart(counts).mark_bar().encode(x="step:Q", y="clipped heads:Q"), width="stretch")
    st.dataframe(clips[["step", "layer", "head", "max_logit"]], hide_index=True, width="stretch")
