"""Offline store: the point-in-time TRAINING table (one row per impression + the user's sequence before it).

Design (PERF-NOTES.md, measured fastest here): history events are sorted once (feature_store.history.SortedHistory);
impressions are processed in chunks of `chunk_size` in time order; per chunk one `searchsorted` finds every window,
one flat gather fills every sequence column, `pa.ListArray.from_arrays` wraps them without a copy, and the chunk is
handed to `writer_threads` writer threads (bounded: at most writer_threads + 1 chunks exist) (the parquet encoder releases the GIL). Memory is
the sorted history (~30 bytes per history event, divided by `user_shards`) plus at most writer_threads + 1 chunks in
flight (~chunk_size * mean sequence length * 30 bytes each). The number of impressions never matters; the number of
history events matters only through the history term, which `user_shards` (one pass over the events per shard,
users split by user_id & (shards-1)) divides, so memory stays bounded at any data size.

Output: OUT/training/part-NNNNN.parquet (part-SSSS-NNNNN with shards), one file per chunk, in impression time order
(ties: user, then file order; with shards: time order within each shard), so the table is reproducible and does
not depend on thread timing; files are written into OUT/training.partial and
the directory is renamed into place at the end (a crashed build never looks finished). A summary is written to
OUT/training.json. Extra attribute columns (item_<a>, seq_<a>, user_<a>) follow the contract columns.
"""
from __future__ import annotations

import json
import os
import queue
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from feature_store.definitions import FeatureConfig
from feature_store.history import ItemAttributes, SortedHistory, _ts_ms
from recsys.data.io import DataError, check_schema, list_files, read_table
from recsys.data.schemas import TABLES, TRAINING, Action

# Dictionary-encode only low-cardinality columns: trying (and abandoning) dictionaries on id lists costs ~20% of
# the encoder's time, and the encoder is the ceiling of the whole build (PERF-NOTES.md).
DICTIONARY_COLUMNS = ["domain", "position", "label", "policy", "seq_action", "seq_domain"]
# Rows per parquet row group: the encoder's buffers scale with a row group, not with the chunk (and training readers
# can stream row groups). ~2k impressions x mean sequence ~600 = ~1M values per list column.
ROW_GROUP_ROWS = 2048
IMPRESSION_COLUMNS = ["request_id", "ts", "user_id", "item_id", "domain", "position", "label", "policy", "propensity"]


def read_attributes(root: str | Path, name: str, key: str, extra: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Key column + contract/extra numeric attribute columns of the items or users table, validated per file."""
    contract = TABLES[name]
    ids, cols = [], {a: [] for a in extra}
    for f in list_files(root, name):
        pf = pq.ParquetFile(f)
        wanted_contract = [key] + [a for a in extra if a in contract.names]
        check_schema(pf.schema_arrow, contract, str(f), wanted_contract)
        for a in extra:
            idx = pf.schema_arrow.get_field_index(a)
            if idx < 0:
                raise DataError(f"{f}: missing attribute column '{a}' (listed in the feature config)")
            t = pf.schema_arrow.field(idx).type
            if not (pa.types.is_integer(t) or pa.types.is_floating(t)):
                raise DataError(f"{f}: attribute column '{a}' has type {t}, expected an integer or float type")
        t = pf.read(columns=[key] + extra)
        for a in extra:
            if t[a].null_count:
                raise DataError(f"{f}: attribute column '{a}' has {t[a].null_count} nulls")
        ids.append(t[key].to_numpy())
        for a in extra:
            cols[a].append(t[a].to_numpy())
    return np.concatenate(ids), {a: np.concatenate(v) for a, v in cols.items()}


def _shard_filter(shard: tuple[int, int] | None) -> pc.Expression | None:
    if shard is None or shard[1] == 1:
        return None
    return pc.equal(pc.bit_wise_and(pc.field("user_id"), shard[1] - 1), shard[0])


def _and(a: pc.Expression, b: pc.Expression | None) -> pc.Expression:
    return a if b is None else a & b


def load_history(data_dir: str | Path, cfg: FeatureConfig, items: ItemAttributes,
                 shard: tuple[int, int] | None = None) -> SortedHistory:
    """History events (of users in `shard` = (k, n): user_id & (n-1) == k), sorted once."""
    codes = pa.array(cfg.history_codes, type=pa.int8())
    ev = read_table(data_dir, "events", columns=["ts", "user_id", "item_id", "domain", "action"],
                    filter=_and(pc.is_in(pc.field("action"), codes), _shard_filter(shard)))
    # numpy columns, then the Arrow table is released and the columns are handed over (consumed) to the sort
    cols = {"ts": _ts_ms(ev["ts"])}
    for c in ("user_id", "item_id", "action", "domain"):
        cols[c] = ev[c].to_numpy()
    del ev
    attrs = {a: items.lookup(a, cols["item_id"], cfg.on_unknown_item, cfg.unknown_item_value,
                             source=f"{data_dir}/events") for a in cfg.seq_item_attributes}
    return SortedHistory.consume(cols, attrs, dedup=cfg.dedup)


def load_impressions(data_dir: str | Path, shard: tuple[int, int] | None = None) -> pa.Table:
    """Impression rows (of users in `shard`) in time order (ties by user, then file order)."""
    imp = read_table(data_dir, "events", columns=IMPRESSION_COLUMNS + ["action"],
                     filter=_and(pc.equal(pc.field("action"), pa.scalar(int(Action.IMPRESSION), pa.int8())),
                                 _shard_filter(shard)))
    imp = imp.select(IMPRESSION_COLUMNS)
    if imp["label"].null_count:
        raise DataError(f"{data_dir}/events: {imp['label'].null_count} impression rows have a null 'label' "
                        "(the training table needs a label on every impression)")
    ts = _ts_ms(imp["ts"])
    order = np.lexsort((imp["user_id"].to_numpy(), ts))
    return imp.take(pa.array(order))


class _Writers:
    """Writer threads fed through a queue; each encodes whole chunks into their own part files.

    Memory bound: the producer takes a slot before building a chunk and a writer gives it back once the chunk is
    written, so at most writer_threads + 1 chunks exist at any time (writer_threads being encoded, one being built
    or waiting)."""

    def __init__(self, out: Path, n: int, compression: str):
        self.out, self.compression = out, compression
        self.q: queue.Queue = queue.Queue()
        self.slots = threading.Semaphore(n + 1)
        self.error: BaseException | None = None
        self.threads = [threading.Thread(target=self._run, name=f"training-writer-{i}", daemon=True) for i in range(n)]
        for t in self.threads:
            t.start()

    def _run(self) -> None:
        while True:
            item = self.q.get()
            if item is None:
                return
            name, table = item
            try:
                if self.error is None:  # after a failure: drain without writing
                    pq.write_table(table, self.out / f"{name}.parquet", compression=self.compression,
                                   use_dictionary=DICTIONARY_COLUMNS, row_group_size=ROW_GROUP_ROWS)
            except BaseException as e:  # surfaced to the producer
                self.error = e
            finally:
                del table, item
                self.slots.release()

    def reserve(self) -> None:
        """Wait for a free chunk slot (call before building a chunk)."""
        while not self.slots.acquire(timeout=0.5):
            if self.error is not None:
                raise self.error
        if self.error is not None:
            self.slots.release()
            raise self.error

    def put(self, name: str, table: pa.Table) -> None:
        self.q.put((name, table))

    def close(self) -> None:
        for _ in self.threads:
            self.q.put(None)
        for t in self.threads:
            t.join()
        if self.error is not None:
            raise self.error


def _chunk_table(imp: pa.Table, seqs, cand_attrs: dict[str, np.ndarray], user_attrs: dict[str, np.ndarray]) -> pa.Table:
    cols: dict[str, Any] = {}
    seq_cols = seqs.to_arrow()
    for f in TRAINING:
        if f.name == "item_category":
            cols[f.name] = pa.array(cand_attrs["category"], type=pa.int64())
        elif f.name.startswith("seq_"):
            cols[f.name] = seq_cols[f.name]
        else:
            cols[f.name] = imp[f.name]
    fields = list(TRAINING)
    for a, v in cand_attrs.items():
        if a != "category":
            cols[f"item_{a}"] = pa.array(v)
            fields.append(pa.field(f"item_{a}", cols[f"item_{a}"].type))
    for name, arr in seq_cols.items():
        if name not in TRAINING.names:
            cols[name] = arr
            fields.append(pa.field(name, arr.type))
    for a, v in user_attrs.items():
        cols[f"user_{a}"] = pa.array(v)
        fields.append(pa.field(f"user_{a}", cols[f"user_{a}"].type))
    return pa.Table.from_pydict(cols, schema=pa.schema(fields))


def _progress(total: int | None, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="imp", unit_scale=True, desc="training table", disable=not enabled, mininterval=1.0,
                delay=1.0)


def build_training_table(data_dir: str | Path, out_dir: str | Path, cfg: FeatureConfig) -> dict[str, Any]:
    """Build OUT/training from DATA (events, items[, users]); returns (and writes OUT/training.json) a summary."""
    t0 = time.perf_counter()
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    item_ids, item_vals = read_attributes(data_dir, "items", "item_id", cfg.item_attributes)
    items = ItemAttributes(item_ids, item_vals)
    users = None
    if cfg.user_attributes:
        user_ids, user_vals = read_attributes(data_dir, "users", "user_id", cfg.user_attributes)
        users = ItemAttributes(user_ids, user_vals)
    shards = cfg.user_shards
    final = out_dir / "training"
    partial = out_dir / "training.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    writers = _Writers(partial, cfg.writer_threads, cfg.compression)
    n = n_hist = n_dup = n_users = total_len = full = files = 0
    t_load = 0.0
    bar = _progress(None if shards > 1 else 0, cfg.progress)
    try:
        for k in range(shards):
            t1 = time.perf_counter()
            shard = (k, shards) if shards > 1 else None
            hist = load_history(data_dir, cfg, items, shard)
            imp = load_impressions(data_dir, shard)
            t_load += time.perf_counter() - t1
            if shards == 1:
                bar.reset(total=imp.num_rows)
            n_hist, n_dup, n_users = n_hist + len(hist), n_dup + hist.n_duplicates, n_users + len(hist.users)
            n_chunks = (imp.num_rows + cfg.chunk_size - 1) // cfg.chunk_size
            if imp.num_rows == 0 and (k < shards - 1 or files):
                continue
            for c in range(max(n_chunks, 1)):  # an empty table still gets one (empty) part file
                writers.reserve()
                sl = imp.slice(c * cfg.chunk_size, cfg.chunk_size)
                user = sl["user_id"].to_numpy()
                ts = _ts_ms(sl["ts"])
                seqs = hist.sequences(user, ts, cfg.max_len, with_ts=False)
                lens = seqs.lengths
                total_len += int(lens.sum())
                full += int((lens == cfg.max_len).sum())
                cand_item = sl["item_id"].to_numpy()
                cand = {a: items.lookup(a, cand_item, cfg.on_unknown_item, cfg.unknown_item_value,
                                        source=f"{data_dir}/events (impressions)") for a in cfg.item_attributes}
                uattrs = ({a: users.lookup(a, user, "fill", cfg.unknown_item_value, source="users")
                           for a in cfg.user_attributes} if users else {})
                name = f"part-{c:05d}" if shards == 1 else f"part-{k:04d}-{c:05d}"
                writers.put(name, _chunk_table(sl, seqs, cand, uattrs))
                files += 1
                n += len(user)
                del seqs, sl
                bar.update(len(user))
            del hist, imp
        writers.close()
    except BaseException:
        bar.close()
        try:
            writers.close()
        except BaseException:
            pass
        raise
    bar.close()
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)
    secs = time.perf_counter() - t0
    summary = {
        "impressions": n,
        "history_events": n_hist,
        "duplicates_dropped": n_dup,
        "users_with_history": n_users,
        "user_shards": shards,
        "max_len": cfg.max_len,
        "mean_seq_len": total_len / n if n else 0.0,
        "full_fraction": full / n if n else 0.0,
        "files": files,
        "chunk_size": cfg.chunk_size,
        "load_seconds": round(t_load, 3),
        "seconds": round(secs, 3),
        "impressions_per_min": n / secs * 60 if secs > 0 else 0.0,
        "out": str(final),
    }
    (out_dir / "training.json").write_text(json.dumps(summary, indent=2))
    if cfg.progress:
        print(f"training table: {n:,} impressions, mean sequence {summary['mean_seq_len']:.0f} "
              f"(L={cfg.max_len}), {secs:.1f}s ({summary['impressions_per_min'] / 1e6:.2f}M/min) -> {final}",
              file=sys.stderr)
    return summary
