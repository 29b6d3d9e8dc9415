"""Validating parquet readers and writers for the data contract.

Every reader checks each file's schema against the contract before reading a row, so a wrong file fails with the
file, the column and the expected type — never with a traceback from deep inside pyarrow.
"""
from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys.data.schemas import PARTITIONED, TABLES, TS


class DataError(ValueError):
    """Input data violates the contract; the message names file, column and expected type."""


def table_dir(root: str | Path, name: str) -> Path:
    return Path(root) / name


def list_files(root: str | Path, name: str) -> list[Path]:
    """All parquet files of table `name` under root, in partition then file-name order."""
    d = table_dir(root, name)
    if not d.exists():
        raise DataError(f"{d}: table '{name}' not found (expected a directory of parquet files)")
    files = sorted(p for p in d.rglob("*.parquet") if p.is_file())
    if not files:
        raise DataError(f"{d}: table '{name}' has no parquet files")
    return files


def _open(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as e:
        raise DataError(f"{path}: not a readable parquet file ({e})") from None


def check_schema(actual: pa.Schema, expected: pa.Schema, source: str, columns: Sequence[str] | None = None) -> None:
    """Fail naming the first missing or mistyped contract column; extra columns are allowed."""
    wanted = columns if columns is not None else expected.names
    for name in wanted:
        if name not in expected.names:
            raise DataError(f"{source}: column '{name}' is not part of the contract")
        exp = expected.field(name)
        idx = actual.get_field_index(name)
        if idx < 0:
            raise DataError(f"{source}: missing column '{name}' (expected type {exp.type})")
        got = actual.field(idx).type
        if not got.equals(exp.type):
            raise DataError(f"{source}: column '{name}' has type {got}, expected {exp.type}")


def read_table(
    root: str | Path,
    name: str,
    columns: Sequence[str] | None = None,
    filter: pc.Expression | None = None,
) -> pa.Table:
    """Read a whole contract table (validated per file). `filter` is applied file by file."""
    expected = TABLES[name]
    parts = []
    for f in list_files(root, name):
        pf = _open(f)
        check_schema(pf.schema_arrow, expected, str(f), columns)
        try:
            t = pf.read(columns=list(columns) if columns is not None else expected.names)
        except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as e:
            raise DataError(f"{f}: corrupt parquet data ({e})") from None
        if filter is not None:
            t = t.filter(filter)
        parts.append(t.select(list(columns) if columns is not None else expected.names))
    schema = pa.schema([expected.field(c) for c in (columns if columns is not None else expected.names)])
    return pa.concat_tables([p.cast(schema) for p in parts]) if parts else schema.empty_table()


def iter_batches(
    root: str | Path, name: str, batch_size: int = 65536, columns: Sequence[str] | None = None
) -> Iterator[pa.RecordBatch]:
    """Stream a contract table in record batches (bounded memory), validating every file first."""
    expected = TABLES[name]
    files = list_files(root, name)
    opened = []
    for f in files:
        pf = _open(f)
        check_schema(pf.schema_arrow, expected, str(f), columns)
        opened.append((f, pf))
    cols = list(columns) if columns is not None else expected.names
    for f, pf in opened:
        try:
            yield from pf.iter_batches(batch_size=batch_size, columns=cols)
        except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as e:
            raise DataError(f"{f}: corrupt parquet data ({e})") from None


def conform(table: pa.Table, name: str, source: str = "<table>") -> pa.Table:
    """Select and cast `table` to the contract schema of `name`; fail naming the column when it cannot."""
    expected = TABLES[name]
    cols = []
    for field in expected:
        idx = table.schema.get_field_index(field.name)
        if idx < 0:
            if field.nullable:
                cols.append(pa.nulls(table.num_rows, field.type))
                continue
            raise DataError(f"{source}: missing column '{field.name}' (expected type {field.type})")
        col = table.column(idx)
        if not col.type.equals(field.type):
            try:
                col = col.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise DataError(
                    f"{source}: column '{field.name}' has type {col.type}, expected {field.type} ({e})"
                ) from None
        if not field.nullable and col.null_count:
            raise DataError(f"{source}: column '{field.name}' has {col.null_count} nulls but is required")
        cols.append(col)
    return pa.Table.from_arrays(cols, schema=expected)


def atomic_write(table: pa.Table, path: Path, compression: str = "lz4") -> None:
    """Write to a temp name then rename, so a crash never leaves a half-written part file visible."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    pq.write_table(table, tmp, compression=compression)
    os.replace(tmp, path)


def write_table(table: pa.Table, root: str | Path, name: str, part: str = "part-0", compression: str = "lz4") -> list[Path]:
    """Validate against the contract and write; events/requests go to dt=YYYY-MM-DD partitions by ts."""
    table = conform(table, name)
    d = table_dir(root, name)
    if name not in PARTITIONED:
        p = d / f"{part}.parquet"
        atomic_write(table, p, compression)
        return [p]
    # floor division in numpy (a ChunkedArray has no `//`; arrow's integer divide truncates toward zero)
    days = table["ts"].cast(pa.int64()).to_numpy() // 86_400_000
    written = []
    for day in np.unique(days).tolist():
        sub = table.filter(pa.array(days == day))
        date = dt.date(1970, 1, 1) + dt.timedelta(days=int(day))
        p = d / f"dt={date.isoformat()}" / f"{part}.parquet"
        atomic_write(sub, p, compression)
        written.append(p)
    return written


def ts_from_ms(values) -> pa.Array:
    """int64 milliseconds since the epoch -> the contract's timestamp type."""
    return pa.array(values, type=pa.int64()).cast(TS)


def prepare_output_dir(out: str | Path, marker: str, owned: Sequence[str]) -> None:
    """Make `out` ready for a writer that owns the entries `owned` and leaves `marker` behind when done.

    Partitioned tables are written part by part, so stale partitions of an earlier run would silently mix with
    the new ones. A directory that a previous run of the same writer produced (it holds `marker`) is cleared of
    the owned entries; a directory holding data but no marker is someone else's and is refused.
    """
    import shutil

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: output path exists and is not a directory")
    present = [name for name in owned if (out / name).exists()]
    if present and not (out / marker).exists():
        raise DataError(f"{out}: already holds {', '.join(present)} not written by this command; choose an empty directory")
    for name in present + [marker]:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    out.mkdir(parents=True, exist_ok=True)
