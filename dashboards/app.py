"""The kimi_lab dashboard: ``kimi-lab dashboard [RUNS_DIR]``.

Pages: runs and sweeps, expert load, the routing inspector, attention logits,
swarm traces, data shards. It reads run directories only through the names in
``kimi_lab.metrics`` and never imports torch unless you use the routing inspector.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from dashboards.runs import runs_dir

PAGES = Path(__file__).parent / "views"  # not "pages": Streamlit would add its own navigation

st.set_page_config(page_title="kimi_lab", layout="wide")
st.sidebar.caption(f"runs: `{runs_dir()}`")
nav = st.navigation(
    [
        st.Page(PAGES / "runs.py", title="Runs", url_path="runs", default=True),
        st.Page(PAGES / "experts.py", title="Experts", url_path="experts"),
        st.Page(PAGES / "routing.py", title="Routing inspector", url_path="routing"),
        st.Page(PAGES / "attention.py", title="Attention logits", url_path="attention"),
        st.Page(PAGES / "swarm.py", title="Swarm traces", url_path="swarm"),
        st.Page(PAGES / "data.py", title="Data", url_path="data"),
    ]
)
nav.run()
