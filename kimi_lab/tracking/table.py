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

from kimi_lab.metrics import ATTN_LOGITS_COLUMNS, METRICS_COLUMNS, MOE_LOAD_COLUMNS


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
        if set(rows) != set(self.columns):  # a writer spelling a column its own way: fail, never drop it
            raise ValueError(f"{self.path.name}: columns {sorted(rows)} are not {list(self.columns)}")
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


def _schema(columns: tuple[str, ...], types: tuple[pa.DataType, ...]) -> pa.Schema:
    return pa.schema(list(zip(columns, types, strict=True)))


# Column names from kimi_lab.metrics (the dashboard reads the files by them), types here.
METRICS_SCHEMA = _schema(METRICS_COLUMNS, (pa.int64(), pa.string(), pa.float64()))
MOE_LOAD_SCHEMA = _schema(MOE_LOAD_COLUMNS, (pa.int64(), pa.int32(), pa.int32(), pa.int64(), pa.float32()))
ATTN_LOGITS_SCHEMA = _schema(
    ATTN_LOGITS_COLUMNS, (pa.int64(), pa.int32(), pa.int32(), pa.float32(), pa.bool_(), pa.string())
)
