"""Run-directory files are written atomically and survive a resume."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from kimi_lab.tracking.checkpoint_io import AtomicCheckpointIO
from kimi_lab.tracking.table import METRICS_SCHEMA, ParquetTable


def test_table_flush_reload_and_drop_after(tmp_path: Path) -> None:
    path = tmp_path / "metrics.parquet"
    t = ParquetTable(path, METRICS_SCHEMA)
    for step in range(6):
        t.append(step=step, key="train/loss", value=float(10 - step))
    t.flush()
    assert pq.read_table(path).num_rows == 6
    resumed = ParquetTable(path, METRICS_SCHEMA)  # a resumed run reloads what is there...
    resumed.drop_after(3)  # ...and forgets the steps it will replay
    resumed.append(step=4, key="train/loss", value=0.5)
    resumed.flush()
    table = pq.read_table(path).to_pydict()
    assert table["step"] == [0, 1, 2, 3, 4] and table["value"][-1] == 0.5
    assert not list(tmp_path.glob(".*tmp"))  # no temp files left behind


def test_tables_are_written_under_the_column_names_readers_use(tmp_path: Path) -> None:
    from kimi_lab import metrics as M
    from kimi_lab.tracking.table import ATTN_LOGITS_SCHEMA, MOE_LOAD_SCHEMA

    for schema, columns in (
        (METRICS_SCHEMA, M.METRICS_COLUMNS),
        (MOE_LOAD_SCHEMA, M.MOE_LOAD_COLUMNS),
        (ATTN_LOGITS_SCHEMA, M.ATTN_LOGITS_COLUMNS),
    ):
        assert tuple(schema.names) == columns
    t = ParquetTable(tmp_path / M.MOE_LOAD_FILE, MOE_LOAD_SCHEMA)
    with pytest.raises(ValueError, match="are not"):  # a writer's own spelling of a column: refused
        t.extend({"step": [0], "layer": [1], "expert": [0], "token_count": [5], "bias": [0.0]})


def test_checkpoint_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    assert torch.load(path, weights_only=False)["step"] == 1

    def broken_save(obj, f, *args, **kwargs):  # a kill mid-write, as far as the file is concerned
        f.write(b"partial")
        raise RuntimeError("killed")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(RuntimeError):
        io.save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=False)["step"] == 1  # the previous checkpoint is intact
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


def test_a_module_that_cannot_fill_the_run_files_is_refused(tmp_path: Path) -> None:
    import lightning as L

    from kimi_lab.tracking.contract import RunCounters
    from kimi_lab.tracking.run_dir import RunDirCallback

    class Renamed(L.LightningModule):  # latest_moe_load renamed: the files would stay empty
        counters = RunCounters()
        moe_load = None

        def pop_attn_logits(self) -> dict:
            return {}

    class Reporting(Renamed):
        latest_moe_load = None

    callback, trainer = RunDirCallback(tmp_path, "x", 1), L.Trainer(logger=False, enable_progress_bar=False)
    with pytest.raises(TypeError, match="lacks latest_moe_load of kimi_lab"):
        callback.on_fit_start(trainer, Renamed())
    callback.on_fit_start(trainer, Reporting())
    assert callback.moe_load is not None
