"""Runs: every run and sweep job, curves overlaid, config diffs, metric vs swept parameter."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from dashboards.runs import (
    default_run,
    ema,
    find_runs,
    flatten,
    read_harness_results,
    read_table,
    runs_dir,
    series,
    short_labels,
)
from kimi_lab import metrics as M

# table column -> config key (the column names say what each is: "name" alone was ambiguous)
KEY_CONFIG = {
    "model": "model.name",
    "optimizer": "phase.optim.name",
    "experts": "model.moe.n_routed_experts",
    "top_k": "model.moe.top_k",
    "seq_len": "data.seq_len",
    "seed": "seed",
}
STEP_AXIS = alt.Axis(format="d", tickMinStep=1)  # steps are whole numbers, however few

st.title("Runs")
root = runs_dir()
runs = find_runs(root)
if not runs:
    st.info(f"No runs under `{root}` yet. Train one with `kimi-lab train experiment=quickstart`.")
    st.stop()

rows = []
for r in runs:
    flat = flatten(r.config)
    row = {"run": r.name, "experiment": r.experiment, "status": r.status, "step": r.step}
    row.update({column: flat.get(key) for column, key in KEY_CONFIG.items()})
    for key in (M.TRAIN_LOSS, M.VAL_LOSS):
        row[key] = r.final.get(key)
    rows.append(row)
st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")

st.subheader("Evaluations")
evaluated = []
for r in runs:
    table, problems = read_harness_results(r.path)
    for p in problems:
        st.warning(f"{r.name}: {p}")
    if not table.empty:
        evaluated.append(table.assign(run=r.name))
if evaluated:
    st.dataframe(pd.concat(evaluated), hide_index=True, width="stretch")
else:
    st.caption("no lm-evaluation-harness results yet (kimi-lab evaluate CKPT --tasks ...)")

st.subheader("Curves")
names = [r.name for r in runs]
first = default_run(runs)
chosen = st.multiselect("runs", names, default=[first.name] if first else [])
frames, problems = [], []
for r in runs:
    if r.name not in chosen:
        continue
    m, problem = read_table(r.path, M.METRICS_FILE)
    if problem:
        problems.append(f"{r.name}: {problem}")
        continue
    m = m.assign(run=r.name)
    frames.append(m)
for p in problems:
    st.warning(p)
if frames:
    all_metrics = pd.concat(frames)
    keys = sorted(all_metrics["key"].unique())
    default = [k for k in (M.TRAIN_LOSS, M.VAL_LOSS) if k in keys] or keys[:1]
    picked = st.multiselect("metrics", keys, default=default)
    smoothing = st.slider(
        "smoothing", 0.0, 0.99, 0.6, help="the smoothed line; the raw values stay drawn under it"
    )
    st.caption(
        "Thin lines and the dots are the logged values (hover for them; the last dot is the table's); "
        "the thick line is smoothed."
    )
    labels = short_labels(sorted(all_metrics["run"].unique()))
    for key in picked:
        parts = []
        for run, m in all_metrics.groupby("run"):
            raw = series(m, key)
            parts.append(
                pd.DataFrame(
                    {
                        "step": raw.index,
                        "value": raw.values,
                        "smoothed": ema(raw, smoothing).values,
                        "run": labels[str(run)],
                        "name": run,
                    }
                )
            )
        data = (
            pd.concat(parts) if parts else pd.DataFrame(columns=["step", "value", "smoothed", "run", "name"])
        )
        x = alt.X("step:Q", axis=STEP_AXIS)
        color = alt.Color("run:N", legend=alt.Legend(labelLimit=0))
        tooltip = ["name:N", "step:Q", alt.Tooltip("value:Q", format=".4f", title=key)]
        base = alt.Chart(data, title=key).encode(x=x, color=color)
        raw_line = base.mark_line(opacity=0.35, strokeWidth=1).encode(
            y=alt.Y("value:Q", title=key, scale=alt.Scale(zero=False))
        )
        dots = base.mark_point(filled=True, size=30).encode(y="value:Q", tooltip=tooltip)
        last = data.sort_values("step").groupby("run").tail(1)
        final = (
            alt.Chart(last)
            .mark_point(filled=True, size=90, shape="diamond")
            .encode(x=x, y="value:Q", color=color, tooltip=tooltip)
        )
        layers = [raw_line, dots, final]
        if smoothing > 0:
            layers.insert(1, base.mark_line(strokeWidth=2.5).encode(y=alt.Y("smoothed:Q", title=key)))
        st.altair_chart(alt.layer(*layers), width="stretch")

st.subheader("Config diff")
if len(runs) >= 2:
    c1, c2 = st.columns(2)
    a = c1.selectbox("run A", names, index=0, key="diff_a")
    b = c2.selectbox("run B", names, index=1, key="diff_b")
    fa = flatten(next(r for r in runs if r.name == a).config)
    fb = flatten(next(r for r in runs if r.name == b).config)
    diff = [
        {"key": k, "A": str(fa.get(k)), "B": str(fb.get(k))}
        for k in sorted(set(fa) | set(fb))
        if fa.get(k) != fb.get(k)
    ]
    if diff:
        st.dataframe(pd.DataFrame(diff), hide_index=True, width="stretch")
    else:
        st.caption("identical configs")
else:
    st.caption("one run only: nothing to compare")

st.subheader("Sweeps")
sweeps = sorted({r.sweep for r in runs if r.sweep is not None}, reverse=True)
if not sweeps:
    st.caption("no multirun sweeps yet (kimi-lab train --multirun ...)")
else:
    sweep = st.selectbox("sweep", [str(s.relative_to(root)) for s in sweeps])
    jobs = [r for r in runs if r.sweep is not None and str(r.sweep.relative_to(root)) == sweep]
    params: dict[str, dict[str, str]] = {}
    for job in jobs:
        for o in job.overrides:
            if "=" in o:
                k, v = o.split("=", 1)
                params.setdefault(k.lstrip("+"), {})[job.name] = v
    swept = [k for k, vals in params.items() if len(set(vals.values())) > 1]
    if not swept:
        st.caption("no parameter varies across this sweep's jobs")
    else:
        param = st.selectbox("swept parameter", swept)
        metric_keys = sorted({k for j in jobs for k in j.final})
        metric = st.selectbox(
            "final metric",
            metric_keys,
            index=metric_keys.index(M.VAL_LOSS) if M.VAL_LOSS in metric_keys else 0,
        )
        points = []
        for job in jobs:
            value = params[param].get(job.name)
            if value is None or metric not in job.final:
                continue
            num = pd.to_numeric(value, errors="coerce")
            points.append(
                {param: num if pd.notna(num) else value, metric: job.final[metric], "job": job.name}
            )
        if points:
            data = pd.DataFrame(points)
            kind = "Q" if pd.api.types.is_numeric_dtype(data[param]) else "N"
            chart = (
                alt.Chart(data)
                .mark_line(point=True)
                .encode(
                    x=f"{param}:{kind}",
                    y=alt.Y(f"{metric}:Q", scale=alt.Scale(zero=False)),
                    tooltip=["job", metric],
                )
            )
            st.altair_chart(chart, width="stretch")
        for report in ("report.md",):
            path = next((s for s in sweeps if str(s.relative_to(root)) == sweep), None)
            if path is not None and (path / report).is_file():
                with st.expander("experiment report"):
                    st.markdown((path / report).read_text())
                    for png in sorted(path.glob("*.png")):
                        st.image(str(png))
