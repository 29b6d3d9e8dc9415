"""Map any interaction log (CSV, TSV, parquet) onto the events contract.

Why: users arrive with their own logs; everything downstream reads only the contract. The importer
- reads only the mapped columns (`--map user_id=COL,item_id=COL,ts=COL[,domain=COL,action=COL,label=COL,...]`),
  as raw bytes for CSV/TSV so that nothing is lost before validation;
- validates every value vectorised with pyarrow.compute; a value that does not convert (bad timestamp, missing id,
  non-UTF-8 bytes, unknown action, ...) sends its row to DIR/rejects.parquet with the reason, and is counted;
  rows with the wrong number of fields (CSV/TSV) are rejected the same way;
- re-encodes user and item ids (strings or ints) to dense int64 in the sorted order of the raw values (so the
  (ts, raw user) sort is also the (ts, user_id) sort), and saves the vocabularies (DIR/vocab/<field>.parquet:
  id int64, raw); a non-integer domain and a mapped category are encoded likewise;
- detects per column whether timestamps are epoch seconds / ms / us / ns (by magnitude) or ISO-8601 strings
  (with or without a zone offset; naive times are taken as UTC);
- sorts by (ts, user_id) and drops exact duplicate rows, then writes events (dt= partitions), items (first seen
  domain and time, category if mapped), users, and DIR/import_report.json.
Without an `action` column every row is a CLICK, unless `label` is mapped: then every row is an IMPRESSION.
The whole log is held in memory (Arrow columns); a log larger than memory must be imported in pieces.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from recsys.data.io import DataError, prepare_output_dir, write_table
from recsys.data.schemas import Action

REQUIRED = ("user_id", "item_id", "ts")
OPTIONAL = ("domain", "action", "label", "request_id", "position", "policy", "propensity", "category")
FORMATS = ("csv", "tsv", "parquet")
_ACTION_NAMES = {a.name.lower(): int(a) for a in Action}
# row: 1-based line number for CSV/TSV (header = line 1; blank lines are not counted), row number for parquet
_REJECT_SCHEMA = pa.schema([("file", pa.string()), ("row", pa.int64()), ("reason", pa.string()), ("raw", pa.string())])


@dataclass
class ImportReport:
    source: str
    format: str
    out: str
    valid_rows: int
    rejected_rows: int
    duplicates_dropped: int
    rejects_path: str
    reasons: dict[str, int] = field(default_factory=dict)
    ts_format: str = ""
    users: int = 0
    items: int = 0


def parse_mapping(mapping: str) -> dict[str, str]:
    """'user_id=uid,item_id=iid,ts=time' -> {'user_id': 'uid', ...}; fails naming the bad entry."""
    out: dict[str, str] = {}
    for part in (p.strip() for p in mapping.split(",")):
        if not part:
            continue
        if "=" not in part:
            raise DataError(f"--map entry {part!r} must look like FIELD=COLUMN")
        key, col = (s.strip() for s in part.split("=", 1))
        if key not in REQUIRED + OPTIONAL:
            raise DataError(f"--map: unknown field {key!r} (known: {', '.join(REQUIRED + OPTIONAL)})")
        if not col:
            raise DataError(f"--map: field {key!r} has an empty column name")
        if key in out:
            raise DataError(f"--map: field {key!r} is mapped twice")
        out[key] = col
    missing = [k for k in REQUIRED if k not in out]
    if missing:
        raise DataError(f"--map must name a column for {', '.join(missing)}")
    return out


def _source_files(source: Path, fmt: str) -> list[Path]:
    if not source.exists():
        raise DataError(f"{source}: source not found")
    if source.is_file():
        return [source]
    files = sorted(p for p in source.rglob("*") if p.is_file() and not p.name.startswith((".", "_")))
    if not files:
        raise DataError(f"{source}: directory holds no {fmt} files")
    return files


def _read_csv(path: Path, mapping: dict[str, str], delimiter: str) -> tuple[pa.Table, list[dict]]:
    """Mapped columns as raw binary + the rows with a wrong field count (as rejects)."""
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file")
    bad: list[dict] = []

    def on_invalid(row) -> str:
        bad.append(
            {"file": str(path), "row": int(row.number) if row.number is not None else -1,
             "reason": f"malformed row: expected {row.expected_columns} fields, got {row.actual_columns}", "raw": _safe_text(row.text)}
        )
        return "skip"

    parse = pcsv.ParseOptions(delimiter=delimiter, invalid_row_handler=on_invalid)
    try:
        header = pcsv.open_csv(path, parse_options=pcsv.ParseOptions(delimiter=delimiter, invalid_row_handler=lambda r: "skip"),
                               convert_options=pcsv.ConvertOptions(column_types={}, strings_can_be_null=False)).schema.names
    except pa.ArrowInvalid as e:
        if "Empty CSV file" in str(e):
            raise DataError(f"{path}: empty file") from None
        raise DataError(f"{path}: not a readable {'TSV' if delimiter == chr(9) else 'CSV'} file ({e})") from None
    _check_columns(path, header, mapping)
    cols = list(dict.fromkeys(mapping.values()))
    convert = pcsv.ConvertOptions(include_columns=cols, column_types={c: pa.binary() for c in cols}, strings_can_be_null=False)
    try:
        t = pcsv.read_csv(path, parse_options=parse, convert_options=convert, read_options=pcsv.ReadOptions(use_threads=False))
    except pa.ArrowInvalid as e:
        raise DataError(f"{path}: not a readable CSV/TSV file ({e})") from None
    return t, bad


def _safe_text(x) -> str:
    if isinstance(x, bytes):
        return x.decode("utf-8", errors="backslashreplace")
    return str(x)


def _check_columns(path: Path, names: list[str], mapping: dict[str, str]) -> None:
    for key, col in mapping.items():
        if col not in names:
            raise DataError(f"{path}: missing column '{col}' (mapped to {key}); columns are: {', '.join(names)}")


def _read_parquet(path: Path, mapping: dict[str, str]) -> pa.Table:
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{path}: not a readable parquet file ({e})") from None
    _check_columns(path, pf.schema_arrow.names, mapping)
    try:
        return pf.read(columns=list(dict.fromkeys(mapping.values())))
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{path}: corrupt parquet data ({e})") from None


# Shapes a string must have to be cast to a type: values of another shape are rejected by one vectorised regex, so
# the bisection below only ever sees the rare value of the right shape that still fails (an overflow, month 13).
_INT_RE = r"^[+-]?\d+$"
_NUM_RE = r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$"
_ISO_RE = r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?)?(Z|[+-]\d{2}(:?\d{2})?)?$"


def _shape(typ: pa.DataType) -> tuple[str, str] | None:
    if pa.types.is_integer(typ):
        return _INT_RE, "0"
    if pa.types.is_floating(typ):
        return _NUM_RE, "0"
    if pa.types.is_timestamp(typ):
        return _ISO_RE, "1970-01-01T00:00:00Z" if typ.tz else "1970-01-01"
    return None


def _cast_rows(arr: pa.Array, typ: pa.DataType) -> tuple[pa.Array, np.ndarray]:
    """Cast, isolating the values that fail. Returns (cast array with nulls where the cast failed, mask of failed
    rows; null inputs stay null and are not failures). Strings are first checked against the target's shape (one
    regex); what passes is cast at once, and only a failing cast is bisected to find its bad rows."""
    shape = _shape(typ) if (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)) else None
    if shape is None:
        return _cast_bisect(arr, typ)
    matched = pc.match_substring_regex(arr, shape[0])
    fits = np.asarray(pc.fill_null(matched, True).to_numpy(zero_copy_only=False), dtype=bool)
    if fits.all():
        return _cast_bisect(arr, typ)
    keep = pa.array(fits)
    out, bad = _cast_bisect(pc.if_else(keep, arr, pa.scalar(shape[1], arr.type)), typ)
    return pc.if_else(keep, out, pa.scalar(None, typ)), bad | ~fits


def _cast_bisect(arr: pa.Array, typ: pa.DataType) -> tuple[pa.Array, np.ndarray]:
    """Cast; when it fails, bisect over slices to find the failing rows (clean data costs one vectorised cast)."""
    n = len(arr)
    bad = np.zeros(n, dtype=bool)
    pieces: list[pa.Array] = []

    def rec(lo: int, hi: int) -> None:
        piece = arr.slice(lo, hi - lo)
        try:
            pieces.append(pc.cast(piece, typ))
            return
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            if hi - lo == 1:
                bad[lo] = True
                pieces.append(pa.nulls(1, typ))
                return
        mid = (lo + hi) // 2
        rec(lo, mid)
        rec(mid, hi)

    if n:
        rec(0, n)
    out = pa.concat_arrays(pieces) if pieces else pa.array([], typ)
    return out, bad


class _Rows:
    """Accumulates per-row rejection (first reason wins) while columns are converted."""

    def __init__(self, n: int, files: np.ndarray, rows: np.ndarray) -> None:
        self.n = n
        self.reason = np.full(n, None, dtype=object)
        self.files, self.rows = files, rows

    def reject(self, mask: np.ndarray, reason: str | Callable[[np.ndarray], np.ndarray]) -> None:
        """Reject rows `mask` (unless already rejected); `reason` is a string or maps row indices to strings."""
        if not mask.any():
            return
        idx = np.flatnonzero(mask & (self.reason == None))  # noqa: E711 (object array)
        if idx.size:
            self.reason[idx] = reason if isinstance(reason, str) else reason(idx)

    @property
    def ok(self) -> np.ndarray:
        return self.reason == None  # noqa: E711


def _to_string(arr: pa.Array, field_name: str, rows: _Rows) -> pa.Array:
    """Binary/any -> utf8 string stripped of surrounding blanks; non-UTF-8 and empty values are rejected."""
    if pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type):
        s, bad = _cast_rows(arr, pa.string())
        rows.reject(bad, f"{field_name}: not valid UTF-8")
    elif pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        s = arr.cast(pa.string())
    else:
        s, bad = _cast_rows(arr, pa.string())
        rows.reject(bad, f"{field_name}: cannot be read as text")
    s = pc.utf8_trim_whitespace(s)
    missing = np.asarray(pc.fill_null(pc.equal(s, ""), True).to_numpy(zero_copy_only=False), dtype=bool)
    rows.reject(missing, f"missing {field_name}")
    return s


def _parse_ts(arr: pa.Array, col: str, rows: _Rows) -> tuple[np.ndarray, str]:
    """Any timestamp column -> int64 ms UTC, detecting epoch unit or ISO-8601 for the whole column."""
    if pa.types.is_timestamp(arr.type):
        t = arr if arr.type.tz else pc.assume_timezone(arr, "UTC")
        ms = pc.cast(pc.cast(t, pa.timestamp("ms", tz="UTC"), safe=False), pa.int64())
        rows.reject(np.asarray(pc.is_null(ms).to_numpy(zero_copy_only=False), dtype=bool), "missing ts")
        return np.asarray(pc.fill_null(ms, 0).to_numpy(zero_copy_only=False), dtype=np.int64), "timestamp"
    if pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type):
        num, numbad = pc.cast(arr, pa.float64()), np.zeros(len(arr), bool)
        s = None
    else:
        s = _to_string(arr, "ts", rows)
        num, numbad = _cast_rows(s, pa.float64())
    values = np.asarray(pc.fill_null(num, np.nan).to_numpy(zero_copy_only=False), dtype=np.float64)
    valid_num = ~numbad & np.isfinite(values)
    live = rows.ok
    numeric_share = float(valid_num[live].mean()) if live.any() else 1.0
    if s is not None and numeric_share < 0.5:
        # ISO-8601: strings with a zone offset parse as zoned, the others as naive UTC
        zoned = np.asarray(pc.fill_null(pc.match_substring_regex(s, r"(Z|[+-]\d{2}:?\d{2})$"), False).to_numpy(zero_copy_only=False), dtype=bool)
        iso_ms = np.zeros(len(s), np.int64)
        ok = np.zeros(len(s), bool)
        for mask, typ in ((zoned, pa.timestamp("ns", tz="UTC")), (~zoned, pa.timestamp("ns"))):
            idx = np.flatnonzero(mask)
            if idx.size == 0:
                continue
            t, bad = _cast_rows(s.take(pa.array(idx)), typ)
            iso_ms[idx] = np.floor_divide(np.asarray(pc.fill_null(pc.cast(t, pa.int64()), 0).to_numpy(zero_copy_only=False)), 1_000_000)
            ok[idx] = ~bad
        rows.reject(~ok, _reason_values("bad timestamp", s))
        return iso_ms, "iso8601"
    med = float(np.median(np.abs(values[valid_num & live]))) if (valid_num & live).any() else 0.0
    unit, factor = ("s", 1e3) if med < 1e11 else ("ms", 1.0) if med < 1e14 else ("us", 1e-3) if med < 1e17 else ("ns", 1e-6)
    rows.reject(~valid_num, _reason_values("bad timestamp", s if s is not None else arr))
    ms = np.where(valid_num, np.floor(np.nan_to_num(values) * factor), 0).astype(np.int64)
    return ms, f"epoch_{unit}"


def _reason_values(prefix: str, arr: pa.Array) -> Callable[[np.ndarray], np.ndarray]:
    """Reasons quoting the offending value, computed only for the rejected rows."""

    def make(idx: np.ndarray) -> np.ndarray:
        vals = arr.take(pa.array(idx))
        text = [_safe_text(v) if v is not None else "<null>" for v in vals.to_pylist()]
        return np.array([f"{prefix} '{t}'" for t in text], dtype=object)

    return make


def _parse_int(arr: pa.Array, name: str, typ: pa.DataType, rows: _Rows, required: bool) -> pa.Array:
    if not (pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type)):
        arr = _to_string(arr, name, rows) if required else _nullable_string(arr, name, rows)
    out, bad = _cast_rows(arr, typ)
    rows.reject(bad, _reason_values(f"bad {name}", arr))
    return out


def _nullable_string(arr: pa.Array, name: str, rows: _Rows) -> pa.Array:
    """Optional text fields: empty -> null (not a reject)."""
    if pa.types.is_binary(arr.type):
        s, bad = _cast_rows(arr, pa.string())
        rows.reject(bad, f"{name}: not valid UTF-8")
    else:
        s = arr.cast(pa.string())
    s = pc.utf8_trim_whitespace(s)
    return pc.if_else(pc.equal(s, ""), pa.scalar(None, pa.string()), s)


def _encode(values: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """Dense ids in the sorted order of the raw values (so sorting by raw value = sorting by id) + the vocabulary."""
    vocab = pc.unique(values)
    vocab = vocab.take(pc.sort_indices(vocab))
    ids = pc.index_in(values, value_set=vocab)
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    return np.asarray(ids.to_numpy(zero_copy_only=False), dtype=np.int64), vocab


def _write_vocab(out: Path, name: str, raw: pa.Array) -> None:
    (out / "vocab").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": pa.array(np.arange(len(raw), dtype=np.int64)), "raw": raw}), out / "vocab" / f"{name}.parquet")


def import_log(source: str | Path, format: str, mapping: str, out: str | Path) -> ImportReport:
    """Import `source` (file or directory) in `format` using `mapping`; write the contract tables under `out`."""
    source, out = Path(source), Path(out)
    fmt = format.lower().strip()
    if fmt not in FORMATS:
        raise DataError(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
    cols = parse_mapping(mapping)
    parts, rejects, file_ids, row_ids = [], [], [], []
    files = _source_files(source, fmt)
    for fi, path in enumerate(files):
        if fmt == "parquet":
            t, bad = _read_parquet(path, cols), []
        else:
            t, bad = _read_csv(path, cols, "," if fmt == "csv" else "\t")
        rejects.extend(bad)
        parts.append(t.select(list(dict.fromkeys(cols.values()))))
        file_ids.append(np.full(t.num_rows, fi, np.int64))
        if fmt == "parquet":
            row_ids.append(np.arange(1, t.num_rows + 1, dtype=np.int64))
        else:  # 1-based line numbers: the header is line 1; skipped malformed lines are not records
            lines = np.arange(2, t.num_rows + len(bad) + 2, dtype=np.int64)
            if bad:
                skipped = np.array([b["row"] for b in bad if b["row"] > 0], dtype=np.int64)
                lines = lines[~np.isin(lines, skipped)]
            row_ids.append(lines[: t.num_rows])
    try:
        raw = pa.concat_tables(parts, promote_options="permissive").combine_chunks()
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise DataError(f"{source}: files disagree on column types ({e})") from None
    n = raw.num_rows
    if n == 0 and not rejects:
        raise DataError(f"{source}: empty file (no data rows)")
    rows = _Rows(n, np.concatenate(file_ids) if file_ids else np.zeros(0, np.int64), np.concatenate(row_ids) if row_ids else np.zeros(0, np.int64))

    def column(key: str) -> pa.Array:
        c = raw.column(cols[key])
        return c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c

    user_raw = _to_string(column("user_id"), "user_id", rows) if not pa.types.is_integer(column("user_id").type) else column("user_id")
    item_raw = _to_string(column("item_id"), "item_id", rows) if not pa.types.is_integer(column("item_id").type) else column("item_id")
    for name, arr in (("user_id", user_raw), ("item_id", item_raw)):
        if pa.types.is_integer(arr.type):
            rows.reject(np.asarray(pc.is_null(arr).to_numpy(zero_copy_only=False), dtype=bool), f"missing {name}")
    ts_ms, ts_format = _parse_ts(column("ts"), cols["ts"], rows)

    out_cols: dict[str, pa.Array] = {}
    domain_vocab = None
    if "domain" in cols:
        d = column("domain")
        if not pa.types.is_integer(d.type):
            d = _to_string(d, "domain", rows)
            as_int, bad = _cast_rows(d, pa.int32())
            if bad[rows.ok].any():  # names, not numbers: encode them like ids
                domain_vocab = d
            else:
                out_cols["domain"] = as_int
        else:
            out_cols["domain"] = _parse_int(d, "domain", pa.int32(), rows, True)
    if "action" in cols:
        a = column("action")
        if pa.types.is_integer(a.type):
            codes = np.asarray(pc.fill_null(a, -1).to_numpy(zero_copy_only=False), dtype=np.int64)
            ok_a = np.isin(codes, list(_ACTION_NAMES.values()))
            rows.reject(~ok_a, _reason_values("unknown action", a))
        else:
            s = pc.utf8_lower(_to_string(a, "action", rows))
            as_int, bad = _cast_rows(s, pa.int64())
            codes = np.array(pc.fill_null(as_int, -1).to_numpy(zero_copy_only=False), dtype=np.int64)
            by_name = pc.index_in(s, value_set=pa.array(list(_ACTION_NAMES)))
            named = np.asarray(pc.fill_null(by_name, -1).to_numpy(zero_copy_only=False), dtype=np.int64)
            codes = np.where(named >= 0, np.array(list(_ACTION_NAMES.values()))[np.maximum(named, 0)], codes)
            ok_a = np.isin(codes, list(_ACTION_NAMES.values()))
            rows.reject(~ok_a, _reason_values("unknown action", s))
        out_cols["action"] = pa.array(np.where(ok_a, codes, 0).astype(np.int8))
    else:
        out_cols["action"] = pa.array(np.full(n, int(Action.IMPRESSION if "label" in cols else Action.CLICK), np.int8))
    if "label" in cols:
        lab = column("label")
        if not (pa.types.is_integer(lab.type) or pa.types.is_boolean(lab.type)):
            s = pc.utf8_lower(_nullable_string(lab, "label", rows))
            s = pc.if_else(pc.equal(s, "true"), "1", pc.if_else(pc.equal(s, "false"), "0", s))
            lab = s
        lab8, bad = _cast_rows(lab, pa.int8())
        v = np.asarray(pc.fill_null(lab8, 0).to_numpy(zero_copy_only=False))
        rows.reject(bad | ~np.isin(v, (0, 1)), _reason_values("bad label (expected 0/1)", lab))
        out_cols["label"] = lab8
    for key, typ in (("request_id", pa.int64()), ("position", pa.int32()), ("propensity", pa.float32())):
        if key in cols:
            out_cols[key] = _parse_int(column(key), key, typ, rows, False)
    if "propensity" in cols:
        p = np.asarray(pc.fill_null(out_cols["propensity"], 0.5).to_numpy(zero_copy_only=False), dtype=np.float64)
        rows.reject(~((p > 0) & (p <= 1)), "propensity outside (0, 1]")
    if "policy" in cols:
        out_cols["policy"] = _nullable_string(column("policy"), "policy", rows)
    category_raw = _nullable_string(column("category"), "category", rows) if "category" in cols else None

    # --- rejects ---
    keep = rows.ok
    rej_idx = np.flatnonzero(~keep)
    rej_tables = []
    if rejects:
        rej_tables.append(pa.Table.from_pylist(rejects, schema=_REJECT_SCHEMA))
    if rej_idx.size:
        raw_text = _raw_text(raw.take(pa.array(rej_idx)), cols)
        rej_tables.append(
            pa.table(
                {
                    "file": pa.array([str(files[i]) for i in rows.files[rej_idx]], pa.string()),
                    "row": pa.array(rows.rows[rej_idx], pa.int64()),
                    "reason": pa.array(rows.reason[rej_idx].tolist(), pa.string()),
                    "raw": raw_text,
                },
                schema=_REJECT_SCHEMA,
            )
        )
    prepare_output_dir(out, "import_report.json", ("events", "items", "users", "vocab", "rejects.parquet"))
    rejects_path = out / "rejects.parquet"
    rej = pa.concat_tables(rej_tables) if rej_tables else _REJECT_SCHEMA.empty_table()
    pq.write_table(rej, rejects_path)
    reasons = Counter(_reason_kind(r) for r in rej.column("reason").to_pylist())

    # --- valid rows: sort by (ts, user raw), encode ids, dedupe ---
    kidx = pa.array(np.flatnonzero(keep))
    base = {
        "ts": pa.array(ts_ms[keep]),
        "user": user_raw.take(kidx),
        "item": item_raw.take(kidx),
        **{k: v.take(kidx) for k, v in out_cols.items()},
    }
    if domain_vocab is not None:
        base["domain_raw"] = domain_vocab.take(kidx)
    if category_raw is not None:
        base["category_raw"] = category_raw.take(kidx)
    t = pa.table(base)
    sort_keys = [("ts", "ascending"), ("user", "ascending"), ("item", "ascending")] + [(k, "ascending") for k in out_cols]
    t = t.take(pc.sort_indices(t, sort_keys=sort_keys))
    dup = _duplicate_rows(t)
    t = t.filter(pa.array(~dup))
    n_valid = t.num_rows
    if n_valid == 0:
        report = ImportReport(str(source), fmt, str(out), 0, len(rej), int(dup.sum()), str(rejects_path), dict(reasons), ts_format)
        (out / "import_report.json").write_text(json.dumps(asdict(report), indent=2))
        return report
    user_id, user_vocab = _encode(t.column("user"))
    item_id, item_vocab = _encode(t.column("item"))
    _write_vocab(out, "user_id", user_vocab)
    _write_vocab(out, "item_id", item_vocab)
    if domain_vocab is not None:
        domain, dvocab = _encode(t.column("domain_raw"))
        _write_vocab(out, "domain", dvocab)
        domain_arr = pa.array(domain.astype(np.int32))
    elif "domain" in out_cols:
        domain_arr = t.column("domain").combine_chunks()
    else:
        domain_arr = pa.array(np.zeros(n_valid, np.int32))
    events = pa.table(
        {
            "ts": pa.array(t.column("ts").to_numpy(), pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
            "user_id": pa.array(user_id),
            "item_id": pa.array(item_id),
            "domain": domain_arr,
            **{k: t.column(k) for k in ("action", "request_id", "position", "label", "policy", "propensity") if k in t.column_names},
        }
    )
    write_table(events, out, "events")
    # items: first seen domain and time (rows are time-sorted), category if mapped
    first = np.unique(item_id, return_index=True)[1]  # rows are time-sorted: an item's first row is its first event
    if category_raw is not None:
        cat_codes, cvocab = _encode(pc.fill_null(t.column("category_raw"), "").combine_chunks())
        _write_vocab(out, "category", cvocab)
        category = cat_codes[first]
    else:
        category = np.zeros(first.size, np.int64)
    items = pa.table(
        {
            "item_id": pa.array(item_id[first]),
            "domain": domain_arr.take(pa.array(first)),
            "category": pa.array(category.astype(np.int64)),
            "created_ts": events.column("ts").take(pa.array(first)),
        }
    )
    write_table(items, out, "items")
    write_table(pa.table({"user_id": pa.array(np.arange(len(user_vocab), dtype=np.int64))}), out, "users")
    report = ImportReport(
        str(source), fmt, str(out), n_valid, len(rej), int(dup.sum()), str(rejects_path), dict(reasons), ts_format,
        users=len(user_vocab), items=len(item_vocab),
    )
    (out / "import_report.json").write_text(json.dumps(asdict(report), indent=2))
    return report


def _reason_kind(reason: str) -> str:
    """Group reasons without their quoted values ("bad timestamp 'x'" -> "bad timestamp")."""
    return reason.split(" '", 1)[0].split(": expected", 1)[0]


def _raw_text(t: pa.Table, cols: dict[str, str]) -> pa.Array:
    """'col=value; col=value' per rejected row, bytes shown with backslash escapes."""
    parts = []
    for col in dict.fromkeys(cols.values()):
        vals = t.column(col).to_pylist()
        parts.append([f"{col}={_safe_text(v)}" for v in vals])
    return pa.array(["; ".join(p) for p in zip(*parts)] if parts else [], pa.string())


def _duplicate_rows(t: pa.Table) -> np.ndarray:
    """Rows equal (nulls equal) to the previous row in every column, on a sorted table."""
    n = t.num_rows
    dup = np.ones(n, dtype=bool)
    if n == 0:
        return dup
    dup[0] = False
    for name in t.column_names:
        c = t.column(name).combine_chunks()
        a, b = c.slice(1), c.slice(0, n - 1)
        same = pc.fill_null(pc.equal(a, b), False)
        both_null = pc.and_(pc.is_null(a), pc.is_null(b))
        eq = np.asarray(pc.or_(same, both_null).to_numpy(zero_copy_only=False), dtype=bool)
        dup[1:] &= eq
    return dup
