"""Training-table input for the trainer: locate and validate the parquet files, infer vocabularies, split by time,
and hand each rank its deterministic share of shuffled batches.

Why pyarrow per worker (not Ray Data): every rank needs the same time split and the same per-epoch permutation so
that a resumed run replays exactly the batches it would have seen; a seeded permutation over row indices gives that
with no coordination. Each rank reads only the columns the batch builder needs, one row group at a time, and keeps
only the newest `max_len` events of every history (what the batch builder would keep): the table at the models'
history length, not at the length the feature pipeline stored (a 2000-event feature table read for an L=64 model
holds 64 events per row). The driver only scans the id columns for the vocabulary sizes.

Why one memory-mapped copy (`shared_training_table`): rank 0 writes the cut, time-sorted table once as an
uncompressed Arrow IPC file in the run directory and every rank maps it, so the workers of one machine share its
pages in the OS page cache instead of each holding (and, while sorting, doubling) a private copy; batches are `take`s
from the mapped buffers. The file is keyed by the parquet files' names, sizes and mtimes and by max_len, so a resumed
run reuses it and changed data rebuilds it.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from recsys.allocator import release_free_heap
from recsys.data.batch import BatchSpec, RankingBatch, build_batch, tail_lists
from recsys.data.io import DataError, check_schema
from recsys.data.schemas import TRAINING
from recsys.training.config import DataConfig

COLUMNS = [
    "ts", "user_id", "item_id", "domain", "item_category", "label",
    "seq_item_id", "seq_category", "seq_action", "seq_domain", "seq_time_gap",
]
OPTIONAL_COLUMNS = ["request_id"]  # carried into predictions files when the table has it
# vocabulary -> the columns whose ids index it
VOCAB_COLUMNS = {
    "item": ["item_id", "seq_item_id"],
    "category": ["item_category", "seq_category"],
    "action": ["seq_action"],
    "domain": ["domain", "seq_domain"],
    "user": ["user_id"],
}


def find_table_files(path: str | Path) -> list[Path] | None:
    """Parquet files of a training table at `path` (a table dir, or a dir holding `training/`); None if there are none."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: data directory not found")
    for d in (path / "training", path):
        if d.is_dir():
            files = sorted(p for p in d.glob("*.parquet") if p.is_file())
            if files:
                return files
    return None


SEQ_COLUMNS = [c for c in COLUMNS if c.startswith("seq_")]


def _open(f: Path) -> pq.ParquetFile:
    try:
        pf = pq.ParquetFile(f)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{f}: not a readable parquet file ({e})") from None
    check_schema(pf.schema_arrow, TRAINING, str(f), COLUMNS)
    return pf


def iter_row_groups(files: list[Path], columns: list[str]) -> Iterator[pa.Table]:
    """Every file's row groups in file order, `columns` only (each file validated against the training schema)."""
    for f in files:
        pf = _open(f)
        for i in range(pf.num_row_groups):
            yield pf.read_row_group(i, columns=columns)


def keep_newest(table: pa.Table, max_len: int) -> pa.Table:
    """The newest `max_len` events of every history column (the batch builder's truncation, done at read time)."""
    if len(table) == 0 or pc.max(pc.list_value_length(table.column(SEQ_COLUMNS[0]))).as_py() <= max_len:
        return table
    for c in SEQ_COLUMNS:
        col = table.column(c)
        try:
            values, lens = tail_lists(col, max_len)
        except ValueError as e:
            raise DataError(f"training table column '{c}': {e}") from None
        offsets = pa.array(np.r_[0, np.cumsum(lens)], pa.int32())
        table = table.set_column(table.schema.get_field_index(c), c,
                                 pa.ListArray.from_arrays(offsets, pa.array(values, col.type.value_type)))
    return table


def read_training(files: list[Path], max_len: int | None = None) -> pa.Table:
    """The training table's columns from `files`; with `max_len`, histories cut to their newest max_len events."""
    parts = []
    for f in files:
        pf = _open(f)
        cols = COLUMNS + [c for c in OPTIONAL_COLUMNS if c in pf.schema_arrow.names]
        schema = pa.schema([TRAINING.field(c) for c in cols])
        for i in range(pf.num_row_groups):
            t = pf.read_row_group(i, columns=cols)
            parts.append((t if max_len is None else keep_newest(t, max_len)).cast(schema))
    if not parts or sum(len(t) for t in parts) == 0:
        raise DataError(f"{files[0].parent}: training table has no rows")
    try:
        return pa.concat_tables(parts)
    except pa.ArrowInvalid:  # optional columns in some files only: keep what every file has
        return pa.concat_tables([t.select(COLUMNS) for t in parts])


def sort_by_time(table: pa.Table) -> pa.Table:
    """Rows in timestamp order (stable), one chunk per column: `take` over a chunked column concatenates it first,
    so every batch drawn from a many-chunk table would copy the whole table. No copy when both already hold."""
    ts = table.column("ts").cast(pa.int64()).to_numpy()
    if len(ts) < 2 or bool(np.all(ts[1:] >= ts[:-1])):
        return table.combine_chunks()  # zero-copy for single-chunk columns
    return table.take(pa.array(np.argsort(ts, kind="stable")))


def table_cache_path(files: list[Path], max_len: int | None, cache_dir: Path) -> Path:
    """Where the cut, sorted table of `files` at `max_len` is cached: named by a hash of what it was made from."""
    h = hashlib.sha256(f"max_len={max_len}\n".encode())
    for f in files:
        st = Path(f).stat()
        h.update(f"{Path(f).resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return Path(cache_dir) / f"table-{h.hexdigest()[:16]}.arrow"


def write_table_cache(files: list[Path], max_len: int | None, path: Path) -> None:
    """read_training + sort_by_time, written uncompressed (mappable) and renamed into place (no torn file)."""
    table = sort_by_time(read_training(files, max_len))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with pa.OSFile(str(tmp), "wb") as sink, ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)  # one record batch (sort_by_time's single chunks): mapped back unchunked
    os.replace(tmp, path)
    del table  # the writing rank keeps only the mapped copy, as the others do
    pa.default_memory_pool().release_unused()
    release_free_heap()


def open_table_cache(path: Path) -> pa.Table:
    """The cached table, zero-copy over a read-only memory map (the buffers keep the map alive)."""
    return ipc.open_file(pa.memory_map(str(path), "r")).read_all()


def shared_training_table(
    files: list[Path], max_len: int | None, cache_dir: Path, is_main: bool, barrier: Callable[[], None]
) -> pa.Table:
    """The training table as every rank sees it (read_training, time-sorted), one memory-mapped copy per machine:
    the main rank writes the cache if it is missing, then every rank maps it. Caches of other data, and files a
    killed writer left half-written, are removed by the main rank."""
    path = table_cache_path(files, max_len, cache_dir)
    if is_main and Path(cache_dir).is_dir():
        for old in [*Path(cache_dir).glob("table-*.arrow"), *Path(cache_dir).glob(".table-*.tmp")]:
            if old != path:
                old.unlink(missing_ok=True)
    if is_main and not path.exists():
        write_table_cache(files, max_len, path)
    barrier()
    if not path.exists():
        raise DataError(f"{path}: the main rank's table cache is not visible here; every worker must see the run "
                        "directory (a shared filesystem, as checkpoints need)")
    return open_table_cache(path)


def infer_vocab_sizes(table: pa.Table) -> dict[str, int]:
    """max id + 1 per vocabulary over every column that uses it (ids are taken modulo this size)."""
    out = {}
    for vocab, cols in VOCAB_COLUMNS.items():
        mx = 0
        for c in cols:
            col = table.column(c)
            if pa.types.is_list(col.type):
                col = pc.list_flatten(col)
            if len(col):
                m = pc.max(col).as_py()
                if m is not None:
                    if pc.min(col).as_py() < 0:
                        raise DataError(f"training table column '{c}' has negative ids")
                    mx = max(mx, int(m))
        out[vocab] = mx + 1
    return out


def make_spec(files: list[Path], cfg: DataConfig) -> BatchSpec:
    """Vocabulary sizes from a scan of the id columns, one row group at a time (full histories: an id that only
    occurs beyond max_len still sizes its table), plus the config's overrides."""
    sizes = {v: 1 for v in VOCAB_COLUMNS}
    for t in iter_row_groups(files, [c for cols in VOCAB_COLUMNS.values() for c in cols]):
        for vocab, n in infer_vocab_sizes(t).items():
            sizes[vocab] = max(sizes[vocab], n)
    if cfg.vocab_sizes:
        sizes.update(cfg.vocab_sizes)
    return BatchSpec(max_len=cfg.max_len, vocab_sizes=sizes)


@dataclass
class Split:
    train: pa.Table
    validation: pa.Table
    boundary_ms: int  # rows with ts >= boundary are validation


def time_split(table: pa.Table, cfg: DataConfig) -> Split:
    """Sort by time; validation = rows at or after `validation_start`, or the newest `validation_fraction` of the
    time range (by timestamp, so one request's rows never straddle the boundary)."""
    table = sort_by_time(table)
    ts = table.column("ts").cast(pa.int64()).to_numpy()
    if cfg.validation_start is not None:
        start = cfg.validation_start
        if start.tzinfo is None:
            start = start.replace(tzinfo=dt.timezone.utc)
        boundary = int(start.timestamp() * 1000)
    elif cfg.validation_fraction > 0:
        lo, hi = int(ts[0]), int(ts[-1])
        boundary = hi - int((hi - lo) * cfg.validation_fraction)
        boundary = max(boundary, lo + 1)
    else:
        boundary = int(ts[-1]) + 1
    cut = int(np.searchsorted(ts, boundary, side="left"))
    return Split(train=table.slice(0, cut), validation=table.slice(cut), boundary_ms=boundary)


def history_lengths(table: pa.Table, max_len: int) -> np.ndarray:
    """Per-row history length as the models see it (newest max_len events kept)."""
    lens = pc.list_value_length(table.column("seq_item_id")).fill_null(0).to_numpy(zero_copy_only=False)
    return np.minimum(lens.astype(np.int64), max_len)


def bucket_by_length(
    idx: np.ndarray, lengths: np.ndarray, group: int, window: int, rng: np.random.Generator | None
) -> np.ndarray:
    """Reorder `idx` so that each run of `group` consecutive rows has similar history lengths.

    Why: every batch is padded to its longest history, so a batch of mostly short histories with one heavy user
    costs as much as one of heavy users only. Within each window of `group * window` rows (already shuffled), rows
    are sorted by length and cut into groups; the full groups are then shuffled, so the epoch is still a random
    walk over length buckets (as tf.data's bucket_by_sequence_length) and contains exactly the same rows. A trailing
    partial group stays last, where drop_last removes it as before. `rng=None` (unshuffled, time-ordered training)
    keeps the windows in their order: rows move only within their window, so the epoch stays in time order at the
    granularity of `window` batches."""
    span = group * window
    groups: list[np.ndarray] = []
    for start in range(0, len(idx), span):
        chunk = idx[start : start + span]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        groups.extend(chunk[g : g + group] for g in range(0, len(chunk), group))
    tail = [g for g in groups if len(g) < group]
    full = [g for g in groups if len(g) == group]
    order = rng.permutation(len(full)) if rng is not None else range(len(full))
    return np.concatenate([full[i] for i in order] + tail) if groups else idx


def rank_rows(
    n: int, rank: int, world: int, seed: int, epoch: int, shuffle: bool,
    lengths: np.ndarray | None = None, batch_size: int = 0, bucket_window: int = 0,
) -> np.ndarray:
    """This rank's row indices for one epoch: a seeded permutation (same on all ranks), or with `shuffle=False` the
    rows in table order (the training table is time-sorted), taken with stride `world`.

    With `lengths` and `bucket_window` > 0 the permutation is length-bucketed in groups of batch_size * world rows
    before the stride, so the ranks' batches of one step come from one group: similar lengths on every rank, and
    no rank waits for another's longer batch."""
    idx = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    if lengths is not None and bucket_window > 0 and batch_size > 0:
        rng = np.random.default_rng([seed, epoch, 1]) if shuffle else None
        idx = bucket_by_length(idx, lengths, batch_size * world, bucket_window, rng)
    return idx[rank::world]


def num_batches(n_rows: int, batch_size: int, drop_last: bool) -> int:
    return n_rows // batch_size if drop_last else -(-n_rows // batch_size)


def iter_batches(
    table: pa.Table, rows: np.ndarray, spec: BatchSpec, batch_size: int, start: int = 0, drop_last: bool = True
) -> Iterator[RankingBatch]:
    """RankingBatches over `rows` in order, starting at batch index `start` (resume skips without reading)."""
    for b in range(start, num_batches(len(rows), batch_size, drop_last)):
        sel = rows[b * batch_size : (b + 1) * batch_size]
        yield build_batch(table.take(pa.array(sel)), spec)
