"""Training-table input for the trainer: locate and validate the parquet files, infer vocabularies, split by time,
and hand each rank its deterministic share of shuffled batches.

Why pyarrow per worker (not Ray Data): every rank needs the same time split and the same per-epoch permutation so
that a resumed run replays exactly the batches it would have seen; a seeded permutation over row indices gives that
with no coordination. Each rank reads only the columns the batch builder needs; memory is the table's size per
worker (fine up to a few million rows at L<=256; beyond that, read row groups by rank — not implemented).
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys.data.batch import BatchSpec, RankingBatch, build_batch
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


def read_training(files: list[Path]) -> pa.Table:
    parts = []
    for f in files:
        try:
            pf = pq.ParquetFile(f)
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"{f}: not a readable parquet file ({e})") from None
        check_schema(pf.schema_arrow, TRAINING, str(f), COLUMNS)
        cols = COLUMNS + [c for c in OPTIONAL_COLUMNS if c in pf.schema_arrow.names]
        parts.append(pf.read(columns=cols).cast(pa.schema([TRAINING.field(c) for c in cols])))
    try:
        table = pa.concat_tables(parts)
    except pa.ArrowInvalid:  # optional columns in some files only: keep what every file has
        table = pa.concat_tables([t.select(COLUMNS) for t in parts])
    if table.num_rows == 0:
        raise DataError(f"{files[0].parent}: training table has no rows")
    return table


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


def make_spec(table: pa.Table, cfg: DataConfig) -> BatchSpec:
    sizes = infer_vocab_sizes(table)
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
    ts = table.column("ts").cast(pa.int64()).to_numpy()
    order = np.argsort(ts, kind="stable")
    table, ts = table.take(pa.array(order)), ts[order]
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


def bucket_by_length(idx: np.ndarray, lengths: np.ndarray, group: int, window: int, rng: np.random.Generator) -> np.ndarray:
    """Reorder `idx` so that each run of `group` consecutive rows has similar history lengths.

    Why: every batch is padded to its longest history, so a batch of mostly short histories with one heavy user
    costs as much as one of heavy users only. Within each window of `group * window` rows (already shuffled), rows
    are sorted by length and cut into groups; the full groups are then shuffled, so the epoch is still a random
    walk over length buckets (as tf.data's bucket_by_sequence_length) and contains exactly the same rows. A trailing
    partial group stays last, where drop_last removes it as before."""
    span = group * window
    groups: list[np.ndarray] = []
    for start in range(0, len(idx), span):
        chunk = idx[start : start + span]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        groups.extend(chunk[g : g + group] for g in range(0, len(chunk), group))
    tail = [g for g in groups if len(g) < group]
    full = [g for g in groups if len(g) == group]
    order = rng.permutation(len(full))
    return np.concatenate([full[i] for i in order] + tail) if groups else idx


def rank_rows(
    n: int, rank: int, world: int, seed: int, epoch: int, shuffle: bool,
    lengths: np.ndarray | None = None, batch_size: int = 0, bucket_window: int = 0,
) -> np.ndarray:
    """This rank's row indices for one epoch: a seeded permutation (same on all ranks) taken with stride `world`.

    With `lengths` and `bucket_window` > 0 the permutation is length-bucketed in groups of batch_size * world rows
    before the stride, so the ranks' batches of one step come from one group: similar lengths on every rank, and
    no rank waits for another's longer batch."""
    idx = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    if lengths is not None and bucket_window > 0 and batch_size > 0:
        idx = bucket_by_length(idx, lengths, batch_size * world, bucket_window, np.random.default_rng([seed, epoch, 1]))
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
