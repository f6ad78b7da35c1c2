"""Data: browse shards — image-code pairs beside their code, page recordings playing beside their code,
video frames, text, illustrated documents, chat samples with their pictures and clips.

Reads tar files directly (tarfile, PIL, PyAV): no kimi_lab import beyond metrics.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import streamlit as st

from dashboards.runs import data_dir

PER_PAGE = 4


@st.cache_data(show_spinner=False)
def read_samples(shard: str, mtime: float, limit: int = 200) -> tuple[list[dict[str, Any]], str | None]:
    samples: dict[str, dict[str, Any]] = {}
    try:
        with tarfile.open(shard) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                base = member.name.rsplit("/", 1)[-1]
                key, _, ext = base.partition(".")
                if key not in samples and len(samples) >= limit:
                    break
                f = tar.extractfile(member)
                samples.setdefault(key, {"__key__": key})[ext] = f.read() if f else b""
    except (tarfile.TarError, OSError, EOFError) as exn:
        problem = (
            f"{Path(shard).name} is not fully readable ({type(exn).__name__}); showing what could be read"
        )
        return list(samples.values()), problem
    return list(samples.values()), None


def video_frames(data: bytes, n: int = 6) -> list[Any]:
    import av

    with av.open(io.BytesIO(data)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    step = max(1, len(frames) // n)
    return frames[::step][:n]


def show_chat(record: dict[str, Any], sample: dict[str, Any]) -> None:
    """A conversation: each message, its pictures and clips (``NAME.png`` / ``NAME.mp4`` in the sample)."""
    for m in record.get("messages", [])[:12]:
        role, content = str(m.get("role", "?")), str(m.get("content", ""))
        if content.lstrip().startswith("<"):
            st.markdown(f"**{role}**")
            st.code(content[:6000], language="html")
        else:
            st.markdown(f"**{role}**: {content[:1500]}")
        for name in m.get("images", [])[:4]:
            if f"{name}.mp4" in sample:
                st.video(sample[f"{name}.mp4"], format="video/mp4", loop=True, autoplay=True, muted=True)
            elif f"{name}.png" in sample:
                st.image(sample[f"{name}.png"], width=320)


def show(sample: dict[str, Any]) -> None:
    try:
        record = json.loads(sample.get("json", b"{}"))
    except json.JSONDecodeError:
        record = {}
    modality = record.get("modality", "?")
    st.markdown(f"**{sample['__key__']}** · {modality} · {record.get('source', '?')}")
    try:
        if modality == "image":
            left, right = st.columns(2)
            png = next((sample[e] for e in ("png", "jpg", "jpeg") if e in sample), None)
            if png:
                left.image(png)
            code_ext = next((e for e in ("svg", "html", "txt") if e in sample), None)
            if code_ext:
                right.code(
                    sample[code_ext].decode("utf-8", "replace")[:4000],
                    language="html" if code_ext != "txt" else None,
                )
        elif modality == "video" and "html" in sample:  # a page recording: the clip plays beside its code
            left, right = st.columns(2)
            left.video(sample["mp4"], format="video/mp4", loop=True, autoplay=True, muted=True)
            timeline = record.get("provenance", {}).get("timeline", [])
            if timeline:
                left.dataframe(timeline, hide_index=True)
            right.code(sample["html"].decode("utf-8", "replace")[:6000], language="html")
        elif modality == "video":
            cols = st.columns(6)
            for col, frame in zip(cols, video_frames(sample["mp4"])):
                col.image(frame)
            st.caption(sample.get("txt", b"").decode("utf-8", "replace"))
        elif modality == "chat":
            show_chat(record, sample)
        elif modality == "interleaved":
            for seg in record.get("segments", []):
                if "text" in seg:
                    st.markdown(seg["text"][:1500])
                elif seg.get("image") in sample:
                    st.image(sample[seg["image"]], width=320)
        else:
            st.text(sample.get("txt", b"").decode("utf-8", "replace")[:2000])
    except Exception as exn:  # one bad sample must not break the page
        st.warning(f"could not show this sample: {type(exn).__name__}: {exn}")
    with st.expander("record"):
        st.json(record)


st.title("Data")
root = Path(st.text_input("data folder", str(data_dir())))
folders = sorted({p.parent for p in root.rglob("*.tar")}) if root.is_dir() else []
if not folders:
    st.info(
        f"No shards under `{root}`. Build some: `kimi-lab data build text` (or image-code, page-recordings, "
        "video, interleaved)."
    )
    st.stop()
folder = st.selectbox("shards", folders, format_func=lambda p: str(p.relative_to(root)) or ".")
manifest = folder / "manifest.json"
if manifest.is_file():
    try:
        st.caption(json.dumps(json.loads(manifest.read_text()).get("counts", {})))
    except json.JSONDecodeError:
        st.warning("manifest.json is unreadable")
shards = sorted(folder.glob("*.tar"))
shard = st.selectbox(
    "shard", shards, format_func=lambda p: p.name, key=f"shard of {folder}"
)  # a new folder, its own shards
samples, problem = read_samples(str(shard), shard.stat().st_mtime)
if problem:
    st.warning(problem)
if not samples:
    st.stop()
pages = max(1, (len(samples) + PER_PAGE - 1) // PER_PAGE)
page = st.number_input("page", 1, pages, 1) - 1
for sample in samples[page * PER_PAGE : (page + 1) * PER_PAGE]:
    show(sample)
    st.divider()
