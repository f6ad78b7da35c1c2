"""Swarm traces: one lane per agent on a critical-step time axis, the critical path, the events, the reward.

Critical steps are the swarm's clock (K2.5): a scripted or cached episode takes milliseconds
of wall time, so seconds would draw it as one thin bar; in steps, each orchestrator turn is
one and each stage is as long as its slowest lane.
"""

from __future__ import annotations

import json
from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from dashboards.runs import find_runs, pick_run, runs_dir
from kimi_lab import metrics as M


def load_trace(path: Path) -> tuple[pd.DataFrame | None, int, str | None]:
    """(events, bad lines, problem) of one JSONL trace."""
    rows, bad = [], 0
    try:
        lines = path.read_text().splitlines()
    except OSError as exn:
        return None, 0, f"{path.name}: unreadable ({exn})"
    for line in lines:
        if not line.strip():
            continue
        try:
            e = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if (
            not isinstance(e, dict)
            or e.get("v") != M.SWARM_TRACE_VERSION
            or e.get("kind") not in M.SWARM_EVENT_KINDS
        ):
            bad += 1
            continue
        rows.append(
            {
                **{k: e.get(k) for k in ("t", "step", "agent", "kind", "parent")},
                "detail": e.get("detail") or {},
            }
        )
    if not rows:
        return None, bad, f"{path.name}: no readable events"
    return pd.DataFrame(rows).sort_values("t"), bad, None


def spans(events: pd.DataFrame, axis: str = "step") -> pd.DataFrame:
    """A bar per lane's assignment (assign -> finish) and per orchestrator turn, on ``axis``: "step"
    (critical steps: a turn is one step, a stage as many as its slowest lane) or "t" (seconds; the
    orchestrator is then one bar for the whole episode: a scripted turn takes microseconds)."""
    out = []
    for agent, ev in events.groupby("agent", sort=False):
        if agent == M.SWARM_ORCHESTRATOR:
            turns = ev[(ev["kind"] == "message") & ev["detail"].map(lambda d: d.get("role") == "assistant")]
            if axis == "step" and not turns.empty:
                out += [
                    {"agent": agent, "start": s - 1, "end": s, "stage": -1, "steps": 1, "what": "turn"}
                    for s in turns["step"]
                ]
            else:
                start, end = ev[axis].min(), ev[axis].max()
                out.append(
                    {
                        "agent": agent,
                        "start": start,
                        "end": end,
                        "stage": -1,
                        "steps": None,
                        "what": "episode",
                    }
                )
            continue
        starts = ev[ev["kind"] == "assign"]
        finishes = ev[ev["kind"] == "finish"]
        start_at = list(starts[axis]) or [ev[axis].min()]
        items = [d.get("items") for d in starts["detail"]] or [None]
        for i, (_, fin) in enumerate(finishes.iterrows()):
            j = min(i, len(start_at) - 1)
            d = fin["detail"]
            what = f"items {items[j]}" if items[j] else "work"
            out.append(
                {
                    "agent": agent,
                    "start": start_at[j],
                    "end": fin[axis],
                    "stage": d.get("stage", i),
                    "steps": d.get("steps"),
                    "what": what,
                }
            )
    frame = pd.DataFrame(out)
    if frame.empty:
        return frame
    # Critical path: per stage, the lane that took the most steps (else the longest time).
    frame["critical"] = False
    subs = frame[frame["agent"] != M.SWARM_ORCHESTRATOR]
    for _, stage in subs.groupby("stage"):
        key = stage["steps"].fillna(-1) if stage["steps"].notna().any() else stage["end"] - stage["start"]
        frame.loc[key.idxmax(), "critical"] = True
    frame.loc[frame["agent"] == M.SWARM_ORCHESTRATOR, "critical"] = True
    return frame


st.title("Swarm traces")
runs = find_runs(runs_dir())
run = pick_run(runs, need=M.SWARM_DIR)
if run is None:
    st.info("No run with swarm traces yet (swarm/*.jsonl): they come from agent-swarm episodes.")
    st.stop()
traces = sorted((run.path / M.SWARM_DIR).glob("*.jsonl"))
if not traces:
    st.info("This run's swarm folder holds no .jsonl traces.")
    st.stop()
trace = st.selectbox("episode", traces, format_func=lambda p: p.name)
events, bad, problem = load_trace(trace)
if problem:
    st.warning(problem)
    st.stop()
if bad:
    st.warning(f"{bad} line(s) of {trace.name} could not be read and are left out")

axis_name = st.radio("time axis", ["critical steps", "seconds"], horizontal=True)
axis = "step" if axis_name == "critical steps" else "t"
bars = spans(events, axis)
st.subheader("Timeline (critical path highlighted)")
if not bars.empty:
    st.altair_chart(
        alt.Chart(bars)
        .mark_bar(height=14)
        .encode(
            x=alt.X("start:Q", title=axis_name),
            x2="end:Q",
            y=alt.Y("agent:N", sort=None),
            color=alt.Color(
                "critical:N", scale=alt.Scale(domain=[True, False], range=["#e45756", "#9ecae9"])
            ),
            tooltip=["agent", "what", "stage", "steps", "start", "end"],
        ),
        width="stretch",
    )
    critical_steps = events["step"].dropna().max()
    st.caption(
        f"critical steps used: {critical_steps:g}"
        if pd.notna(critical_steps)
        else "no step counts in this trace"
    )

st.subheader("Events")
st.dataframe(events.assign(detail=events["detail"].map(json.dumps)), hide_index=True, width="stretch")

finish = events[(events["agent"] == M.SWARM_ORCHESTRATOR) & (events["kind"] == "finish")]
reward = finish["detail"].iloc[-1].get("reward") if not finish.empty else None
st.subheader("Reward components")
if isinstance(reward, dict) and reward:
    data = pd.DataFrame({"component": list(reward), "value": [float(v) for v in reward.values()]})
    st.altair_chart(alt.Chart(data).mark_bar().encode(x="component:N", y="value:Q"), width="stretch")
else:
    st.caption("this episode's trace carries no reward")
