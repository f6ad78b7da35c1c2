"""An append-only table flushed to Parquet atomically (write a temp file, then rename).

Readers (the dashboard, a resumed run) therefore always see a complete file.
Rows past a resume point can be dropped, so a resumed run continues the curve
instead of duplicating the steps it replays.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


class ParquetTable:
    def __init__(self, path: str | Path, schema: pa.Schema) -> None:
        self.path = Path(path)
        self.schema = schema
        self.columns = tuple(schema.names)
        columns = self.columns
        self._rows: dict[str, list] = {c: [] for c in columns}
        self._dirty = False
        if self.path.is_file():
            existing = pq.read_table(self.path).to_pydict()
            for c in columns:
                self._rows[c] = list(existing.get(c, []))

    def __len__(self) -> int:
        return len(self._rows[self.columns[0]])

    def append(self, **row: object) -> None:
        for c in self.columns:
            self._rows[c].append(row[c])
        self._dirty = True

    def extend(self, rows: dict[str, list]) -> None:
        n = {len(v) for v in rows.values()}
        if len(n) != 1:
            raise ValueError("all columns need the same number of rows")
        for c in self.columns:
            self._rows[c].extend(rows[c])
        self._dirty = True

    def drop_after(self, step: int) -> None:
        keep = [i for i, s in enumerate(self._rows["step"]) if s <= step]
        if len(keep) != len(self):
            self._rows = {c: [v[i] for i in keep] for c, v in self._rows.items()}
            self._dirty = True

    def flush(self) -> None:
        if not self._dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        pq.write_table(pa.table(self._rows, schema=self.schema), tmp)
        os.replace(tmp, self.path)
        self._dirty = False


METRICS_SCHEMA = pa.schema([("step", pa.int64()), ("key", pa.string()), ("value", pa.float64())])
MOE_LOAD_SCHEMA = pa.schema(
    [
        ("step", pa.int64()),
        ("layer", pa.int32()),
        ("expert", pa.int32()),
        ("tokens", pa.int64()),
        ("bias", pa.float32()),
    ]
)
ATTN_LOGITS_SCHEMA = pa.schema(
    [
        ("step", pa.int64()),
        ("layer", pa.int32()),
        ("head", pa.int32()),
        ("max_logit", pa.float32()),
        ("clipped", pa.bool_()),
        ("tower", pa.string()),
    ]
)
