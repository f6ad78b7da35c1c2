"""``kimi-lab data build captions --src DIR``: the same samples with their code replaced by captions.

The control of ``experiment vision_coding``: pre-training on the very pictures and clips of
an ``image-code`` or ``page-recordings`` folder, each paired with the caption its record
holds (a sentence describing the picture, or the page and what happens when) instead of its
code (``.svg`` / ``.html``). Nothing is rendered again; each sample keeps its key and split,
so the two folders hold the same pictures in the same train/val halves. A sample whose record
has no caption is a counted skip (``no_caption``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from data_pipelines.common import ShardSink
from kimi_lab.data.decode import CODE_EXTS
from kimi_lab.data.shards import iter_shard_samples
from kimi_lab.errors import DataError

BUILDER_VERSION = "captions/1"


def build_captions(
    out: str | Path,
    src: str | Path | None = None,
    seed: int = 0,
    shard_bytes: int = 256_000,
    progress: bool = True,
    n: int | None = None,
) -> dict[str, Any]:
    """Every sample of ``src`` (at most ``n``), its code replaced by its record's caption (``.txt``)."""
    from tqdm import tqdm

    if src is None:
        raise DataError("data build captions: --src names the image-code or page-recordings folder")
    source = Path(src)
    try:
        manifest = json.loads((source / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError):
        raise DataError(
            f"--src {source}: no readable manifest.json (build it with kimi-lab data build)"
        ) from None
    if Path(out).resolve() == source.resolve():
        raise DataError(f"--out {out}: must differ from --src (the captions go beside the code)")
    sink = ShardSink(out, 0.0, shard_bytes)
    done = 0
    try:
        for split in ("train", "val"):
            urls = iter(str(source / name) for name in manifest["shards"][split])
            for sample in tqdm(
                iter_shard_samples(urls, None), desc=f"captions {split}", disable=not progress
            ):
                if n is not None and done >= n:
                    break
                record = json.loads(sample["json"])
                caption = record.get("provenance", {}).get("caption")
                if not isinstance(caption, str) or not caption:
                    sink.count("no_caption")
                    continue
                record["source"] = f"{record.get('source', 'sample')}-caption"
                kept = {
                    k: v
                    for k, v in sample.items()
                    if k not in CODE_EXTS and k != "json" and (k == "__key__" or not k.startswith("__"))
                }
                sink.write({**kept, "txt": caption.encode(), "json": json.dumps(record).encode()}, split)
                done += 1
    finally:
        out_manifest = sink.close(
            "captions",
            manifest.get("modality", "image"),
            int(manifest.get("seed", seed)),
            BUILDER_VERSION,
            pairs="caption",
            source=str(source),
            source_kind=manifest.get("kind"),
        )
    return out_manifest
