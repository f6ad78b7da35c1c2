"""What every builder shares: size-capped train/val shard writers and the manifest.

A sample goes to val when a hash of its key falls in the val fraction, so the
split is stable whatever order the builder produces samples in. A rebuild
removes the previous shards of the folder first, so shards never mix.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from kimi_lab.data.schema import SCHEMA_VERSION


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


class ShardSink:
    """Writes samples into ``train-%06d.tar`` / ``val-%06d.tar`` and counts them."""

    def __init__(self, out: str | Path, val_fraction: float = 0.02, shard_bytes: int = 1_000_000) -> None:
        import webdataset as wds

        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        for old in [*self.out.glob("train-*.tar"), *self.out.glob("val-*.tar"), self.out / "manifest.json"]:
            old.unlink(missing_ok=True)
        self.val_fraction = val_fraction
        self.writers = {
            split: wds.ShardWriter(
                str(self.out / f"{split}-%06d.tar"), maxsize=shard_bytes, maxcount=100_000, verbose=0
            )
            for split in ("train", "val")
        }
        self.counts = {"train": 0, "val": 0}
        self.bytes = {"train": 0, "val": 0}
        self.extra: dict[str, int] = {}

    def split_of(self, key: str) -> str:
        bucket = int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        return "val" if bucket < self.val_fraction else "train"

    def write(self, sample: dict[str, Any], split: str | None = None) -> str:
        split = split or self.split_of(sample["__key__"])
        self.writers[split].write(sample)
        self.counts[split] += 1
        self.bytes[split] += sum(len(v) for k, v in sample.items() if not k.startswith("__"))
        return split

    def count(self, what: str, n: int = 1) -> None:
        self.extra[what] = self.extra.get(what, 0) + n

    def close(self, kind: str, modality: str, seed: int, builder: str, **info: Any) -> dict[str, Any]:
        for w in self.writers.values():
            w.close()
        if self.counts["val"] == 0:  # nothing fell in the val fraction: no empty val shard left behind
            for f in self.out.glob("val-*.tar"):
                f.unlink()
        manifest = {
            "builder": builder,
            "kind": kind,
            "modality": modality,
            "schema_version": SCHEMA_VERSION,
            "seed": seed,
            "counts": {**self.counts, **self.extra},
            "bytes": self.bytes,
            "shards": {
                split: sorted(p.name for p in self.out.glob(f"{split}-*.tar")) for split in ("train", "val")
            },
            **info,
        }
        write_json_atomic(self.out / "manifest.json", manifest)
        return manifest
