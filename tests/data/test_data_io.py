"""Readers reject wrong schemas and corrupt files with file, column and expected type (never a deep traceback)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.data.io import DataError, conform, iter_batches, read_table, write_table
from recsys.data.schemas import EVENTS, TS

DAY = 86_400_000
T0 = 1_704_067_200_000  # 2024-01-01


def _events(n: int = 6, t0: int = T0, step: int = DAY // 2) -> pa.Table:
    return pa.table(
        {
            "ts": pa.array(t0 + step * np.arange(n), pa.int64()).cast(TS),
            "user_id": pa.array(np.arange(n) % 3, pa.int64()),
            "item_id": pa.array(np.arange(n) + 100, pa.int64()),
            "domain": pa.array(np.zeros(n), pa.int32()),
            "action": pa.array(np.ones(n), pa.int8()),
        }
    )


def _put(root, table: pa.Table, name: str = "events", rel: str = "dt=2024-01-01/part-0.parquet"):
    p = root / name / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, p)
    return p


def test_write_then_read_roundtrip_partitions_by_day(tmp_path):
    t = _events()
    paths = write_table(t, tmp_path, "events")
    assert sorted(p.parent.name for p in paths) == ["dt=2024-01-01", "dt=2024-01-02", "dt=2024-01-03"]
    back = read_table(tmp_path, "events")
    assert back.schema.equals(EVENTS)
    assert back.column("item_id").to_pylist() == t.column("item_id").to_pylist()
    assert back.column("request_id").null_count == t.num_rows  # optional columns filled with nulls
    assert sum(b.num_rows for b in iter_batches(tmp_path, "events", batch_size=2)) == t.num_rows


def test_wrong_column_type_names_file_column_and_type(tmp_path):
    t = _events().set_column(1, "user_id", pa.array([str(i) for i in range(6)]))
    p = _put(tmp_path, conform_loose(t))
    with pytest.raises(DataError) as e:
        read_table(tmp_path, "events")
    msg = str(e.value)
    assert str(p) in msg and "'user_id'" in msg and "int64" in msg and "string" in msg


def conform_loose(t: pa.Table) -> pa.Table:
    """The events columns as given (a wrong file written by someone else), plus the optional ones."""
    cols = {name: t.column(name) for name in t.column_names}
    for f in EVENTS:
        if f.name not in cols:
            cols[f.name] = pa.nulls(t.num_rows, f.type)
    return pa.table(cols)


def test_missing_column_names_column_and_expected_type(tmp_path):
    p = _put(tmp_path, conform_loose(_events()).drop_columns(["domain"]))
    with pytest.raises(DataError) as e:
        read_table(tmp_path, "events")
    assert str(p) in str(e.value) and "missing column 'domain'" in str(e.value) and "int32" in str(e.value)
    with pytest.raises(DataError, match="missing column 'domain'"):
        next(iter_batches(tmp_path, "events"))


def test_timestamp_with_wrong_unit_is_rejected(tmp_path):
    t = conform_loose(_events()).set_column(0, "ts", pa.array(np.arange(6), pa.int64()))
    _put(tmp_path, t)
    with pytest.raises(DataError, match=r"column 'ts' has type int64, expected timestamp\[ms, tz=UTC\]"):
        read_table(tmp_path, "events")


def test_garbage_bytes_are_not_a_parquet_file(tmp_path):
    p = tmp_path / "events" / "dt=2024-01-01" / "part-0.parquet"
    p.parent.mkdir(parents=True)
    p.write_bytes(b"\x00\xffthis is not parquet" * 10)
    with pytest.raises(DataError) as e:
        read_table(tmp_path, "events")
    assert str(p) in str(e.value) and "not a readable parquet file" in str(e.value)


def test_truncated_parquet_file_is_rejected(tmp_path):
    p = _put(tmp_path, conform(_events(), "events"))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=str(p)):
        read_table(tmp_path, "events")


def test_missing_table_and_empty_table_dir(tmp_path):
    with pytest.raises(DataError, match="table 'events' not found"):
        read_table(tmp_path, "events")
    (tmp_path / "events").mkdir()
    with pytest.raises(DataError, match="no parquet files"):
        read_table(tmp_path, "events")


def test_write_rejects_values_that_do_not_fit_the_contract(tmp_path):
    bad = _events().set_column(1, "user_id", pa.array(["a", "b", "c", "d", "e", "f"]))
    with pytest.raises(DataError, match="column 'user_id' has type string, expected int64"):
        write_table(bad, tmp_path, "events")
    with pytest.raises(DataError, match="missing column 'item_id'"):
        write_table(_events().drop_columns(["item_id"]), tmp_path, "events")
    nulls = _events().set_column(2, "item_id", pa.array([1, None, 3, 4, 5, 6], pa.int64()))
    with pytest.raises(DataError, match="'item_id' has 1 nulls"):
        write_table(nulls, tmp_path, "events")
