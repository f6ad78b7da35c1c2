"""The kimi_lab dashboard: ``kimi-lab dashboard [RUNS_DIR]``.

Pages: runs and sweeps, expert load, the routing inspector, attention logits,
swarm traces, data shards. It reads run directories only through the names in
``kimi_lab.metrics`` and never imports torch unless you use the routing inspector.

Every page lives at the root URL (``/?page=experts``), chosen in the sidebar: Streamlit
probes ``<page path>/_stcore/health`` when a page is opened by its own path, and each probe
is a 404 in the browser console (streamlit/streamlit#7074).
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from dashboards.runs import runs_dir

VIEWS = Path(__file__).parent / "views"  # not "pages": Streamlit would add its own navigation
PAGES = {  # ?page= value -> title; the file is views/<value>.py
    "runs": "Runs",
    "experts": "Experts",
    "routing": "Routing inspector",
    "attention": "Attention logits",
    "swarm": "Swarm traces",
    "data": "Data",
}

st.set_page_config(page_title="kimi_lab", layout="wide")
asked = st.query_params.get("page", "runs")
current = asked if asked in PAGES else "runs"
page = st.sidebar.radio(
    "page", list(PAGES), index=list(PAGES).index(current), format_func=PAGES.get, label_visibility="collapsed"
)
if st.query_params.get("page") != page:
    st.query_params["page"] = page  # the address bar says where you are: reload or share it
st.sidebar.caption(f"runs: `{runs_dir()}`")
st.navigation([st.Page(VIEWS / f"{page}.py", title=PAGES[page], default=True)], position="hidden").run()
