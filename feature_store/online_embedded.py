"""Embedded online store (the default): in-memory sequences made durable by a write-ahead log on local disk.

Why this design: serving reads must be fast (memory), and nothing acknowledged may be lost on a process kill.
- Every `append`/`put_items` batch is validated, encoded as one log record, written, flushed and fsynced (group
  commit: one fsync per batch), and only then applied in memory and acknowledged. Record layout:
  b"RSW1" | u32 payload length | u32 crc32(payload) | payload, payload = kind (b"E" events, b"I" items) + an Arrow
  IPC stream of the batch.
- When the log exceeds `online.snapshot_bytes`, the whole state is written as a snapshot (Arrow IPC files, fsynced)
  under a new generation, the manifest CURRENT (fsynced, atomically renamed) is switched to it, a new log
  `wal-<gen>.log` starts, and older files are deleted. Appends wait while a snapshot is written.
- Recovery (on open): load the snapshot CURRENT names, replay every log of that generation or later. A torn last
  record (the process died inside a write, so it was never acknowledged) is truncated away; a damaged record
  followed by more data is corruption and fails with the file and offset.
- One process owns a store directory (an exclusive flock on LOCK); a second opener gets a StoreError.
Memory: every retained event lives in memory (~21 bytes each: L x users x 21 B at most).
"""
from __future__ import annotations

import fcntl
import json
import os
import struct
import threading
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from feature_store.definitions import FeatureConfig
from feature_store.history import Sequences
from feature_store.online import (EVENT_DTYPE, EventBatch, OnlineStore, StoreError, assemble, merge_user,
                                  request_times, validate_events, validate_items)

MAGIC = b"RSW1"
HEADER = struct.Struct("<4sII")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _ipc_bytes(batch: pa.RecordBatch) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as w:
        w.write_batch(batch)
    return sink.getvalue().to_pybytes()


def _ipc_read(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


class _Items:
    """Item attributes as sorted ids + value columns (vectorised lookups for whole sequences)."""

    def __init__(self, attributes: list[str]):
        self.attributes = attributes
        self.ids = np.empty(0, np.int64)
        self.values = {a: np.empty(0, np.int64) for a in attributes}

    def put(self, ids: np.ndarray, values: dict[str, np.ndarray]) -> None:
        all_ids = np.concatenate([self.ids, ids])
        # the last occurrence wins: unique over the reversed array keeps the newest value of each id
        rev = all_ids[::-1]
        uniq, first_rev = np.unique(rev, return_index=True)
        src = len(all_ids) - 1 - first_rev
        self.ids = uniq
        self.values = {a: np.concatenate([self.values[a], values[a]])[src] for a in self.attributes}

    def get(self, ids: np.ndarray, fill: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        if len(self.ids) == 0:
            found = np.zeros(len(ids), dtype=bool)
            return {a: np.full(len(ids), fill, np.int64) for a in self.attributes}, found
        pos = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
        found = self.ids[pos] == ids
        out = {}
        for a in self.attributes:
            v = self.values[a][pos]
            v[~found] = fill
            out[a] = v
        return out, found


class EmbeddedOnlineStore(OnlineStore):
    def __init__(self, cfg: FeatureConfig, path: str | Path | None = None):
        super().__init__(cfg)
        self.path = Path(path if path is not None else cfg.online.path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.fsync = cfg.online.fsync
        self.snapshot_bytes = cfg.online.snapshot_bytes
        self._lock = threading.RLock()
        self._lockfile = open(self.path / "LOCK", "a+")
        try:
            fcntl.flock(self._lockfile, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lockfile.close()
            raise StoreError(f"{self.path}: online store is open in another process (LOCK held)") from None
        self.seqs: dict[int, np.ndarray] = {}
        self.items = _Items(self.item_attributes)
        self.gen = 0
        self.records_replayed = 0
        self.torn_bytes_dropped = 0
        self._wal = None
        self._recover()

    # ---- durability -------------------------------------------------------------------------------------------
    def _manifest(self) -> dict:
        p = self.path / "CURRENT"
        if not p.exists():  # a new store: record what it holds, so a later open with another config is refused
            self._write_manifest(0)
        return json.loads(p.read_text())

    def _write_manifest(self, gen: int) -> None:
        tmp = self.path / "CURRENT.tmp"
        with open(tmp, "w") as f:
            json.dump({"gen": gen, "max_len": self.max_len, "attributes": self.item_attributes}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path / "CURRENT")
        _fsync_dir(self.path)

    def _recover(self) -> None:
        m = self._manifest()
        if m.get("attributes") != self.item_attributes:
            raise StoreError(f"{self.path}: store holds item attributes {m.get('attributes')}, config asks for "
                             f"{self.item_attributes}")
        self.gen = int(m["gen"])
        if self.gen > 0:
            ev = pa.ipc.open_file(self.path / f"snapshot-{self.gen:08d}.events.arrow").read_all()
            it = pa.ipc.open_file(self.path / f"snapshot-{self.gen:08d}.items.arrow").read_all()
            if it.num_rows:
                self.items.put(it["item_id"].to_numpy(), {a: it[a].to_numpy() for a in self.item_attributes})
            if ev.num_rows:
                self._apply_events(EventBatch.from_arrow(ev.combine_chunks().to_batches()[0]))
        wals = sorted(p for p in self.path.glob("wal-*.log") if int(p.stem.split("-")[1]) >= self.gen)
        for i, w in enumerate(wals):
            self._replay(w, last=i == len(wals) - 1)
        self._open_wal(self.gen)

    def _replay(self, path: Path, last: bool) -> None:
        data = path.read_bytes()
        off = 0
        while off < len(data):
            torn = None
            if len(data) - off < HEADER.size:
                torn = "incomplete header"
            else:
                magic, n, crc = HEADER.unpack_from(data, off)
                end = off + HEADER.size + n
                if magic != MAGIC:
                    torn = "bad magic"
                elif end > len(data):
                    torn = "incomplete record"
                elif zlib.crc32(data[off + HEADER.size:end]) != crc:
                    torn = "checksum mismatch"
                    if end < len(data):
                        raise StoreError(f"{path}: corrupt record at byte {off} ({torn}) followed by more data")
            if torn is not None:
                if not last or (torn == "bad magic" and len(data) - off >= HEADER.size + 64):
                    raise StoreError(f"{path}: corrupt log at byte {off} ({torn})")
                # the tail write never completed, so it was never acknowledged: cut it off
                with open(path, "r+b") as f:
                    f.truncate(off)
                    f.flush()
                    os.fsync(f.fileno())
                self.torn_bytes_dropped += len(data) - off
                return
            payload = data[off + HEADER.size:end]
            self._apply_record(payload[:1], _ipc_read(payload[1:]))
            self.records_replayed += 1
            off = end

    def _open_wal(self, gen: int) -> None:
        if self._wal is not None:
            self._wal.close()
        p = self.path / f"wal-{gen:08d}.log"
        new = not p.exists()
        self._wal = open(p, "ab")
        if new and self.fsync:
            _fsync_dir(self.path)

    def _log(self, kind: bytes, batch: pa.RecordBatch) -> None:
        payload = kind + _ipc_bytes(batch)
        self._wal.write(HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload)
        self._wal.flush()
        if self.fsync:
            os.fsync(self._wal.fileno())

    def snapshot(self) -> None:
        """Write the whole state as generation gen+1, switch CURRENT to it, start a new log, drop old files."""
        with self._lock:
            gen = self.gen + 1
            users = list(self.seqs)
            lens = np.array([len(self.seqs[u]) for u in users], dtype=np.int64)
            rec = np.concatenate([self.seqs[u] for u in users]) if users else np.empty(0, EVENT_DTYPE)
            ev = pa.table({"user_id": np.repeat(np.array(users, dtype=np.int64), lens), "ts": rec["ts"],
                           "item_id": rec["item_id"], "action": rec["action"], "domain": rec["domain"]})
            it = pa.table({"item_id": self.items.ids, **{a: self.items.values[a] for a in self.item_attributes}})
            for name, t in (("events", ev), ("items", it)):
                p = self.path / f"snapshot-{gen:08d}.{name}.arrow"
                with pa.OSFile(str(p), "wb") as f, pa.ipc.new_file(f, t.schema) as w:
                    w.write_table(t)
                with open(p, "rb+") as f:
                    os.fsync(f.fileno())
            self._open_wal(gen)
            self._write_manifest(gen)
            self.gen = gen
            for p in list(self.path.glob("wal-*.log")) + list(self.path.glob("snapshot-*.arrow")):
                if int(p.name.split("-")[1].split(".")[0]) < gen:
                    p.unlink()

    def _maybe_snapshot(self) -> None:
        if self._wal.tell() >= self.snapshot_bytes:
            self.snapshot()

    # ---- state ------------------------------------------------------------------------------------------------
    def _apply_record(self, kind: bytes, t: pa.Table) -> None:
        if kind == b"E":
            self._apply_events(EventBatch.from_arrow(t.combine_chunks().to_batches()[0]) if t.num_rows else None)
        elif kind == b"I":
            if t.num_rows:
                self.items.put(t["item_id"].to_numpy(), {a: t[a].to_numpy() for a in self.item_attributes})
        else:
            raise StoreError(f"{self.path}: unknown log record kind {kind!r}")

    def _apply_events(self, batch: EventBatch | None) -> int:
        if batch is None or len(batch) == 0:
            return 0
        added = 0
        empty = np.empty(0, EVENT_DTYPE)
        for user, rows in batch.by_user():
            merged, n = merge_user(self.seqs.get(user, empty), rows, self.max_len)
            self.seqs[user] = merged
            added += n
        return added

    # ---- interface --------------------------------------------------------------------------------------------
    def append(self, events: Any) -> int:
        batch = validate_events(events, self.history_codes)
        if len(batch) == 0:
            return 0
        with self._lock:
            self._check_open()
            self._log(b"E", batch.to_arrow())
            added = self._apply_events(batch)
            self._maybe_snapshot()
        return added

    def put_items(self, items: Any) -> int:
        ids, attrs = validate_items(items, self.item_attributes)
        if len(ids) == 0:
            return 0
        with self._lock:
            self._check_open()
            self._log(b"I", pa.record_batch({"item_id": ids, **attrs}))
            self.items.put(ids, attrs)
            self._maybe_snapshot()
        return len(ids)

    def get_items(self, item_ids: Any) -> tuple[dict[str, np.ndarray], np.ndarray]:
        ids = np.asarray(item_ids, dtype=np.int64)
        with self._lock:
            return self.items.get(ids, self.unknown_item_value)

    def get_sequences(self, user_ids: Any, request_ts: Any) -> Sequences:
        users, cutoff = request_times(user_ids, request_ts)
        empty = np.empty(0, EVENT_DTYPE)
        parts = []
        with self._lock:
            self._check_open()
            for u, t in zip(users.tolist(), cutoff.tolist()):
                s = self.seqs.get(u, empty)
                end = int(np.searchsorted(s["ts"], t, side="left"))
                parts.append(s[max(0, end - self.max_len):end])
            rec = np.concatenate(parts) if parts else empty
            attrs, _ = self.items.get(rec["item_id"], self.unknown_item_value)
        return assemble(parts, cutoff, {a: attrs[a] for a in self.seq_attributes})

    def _check_open(self) -> None:
        if self._wal is None:
            raise StoreError(f"{self.path}: store is closed")

    def close(self) -> None:
        with self._lock:
            if self._wal is not None:
                self._wal.close()
                self._wal = None
            if not self._lockfile.closed:
                fcntl.flock(self._lockfile, fcntl.LOCK_UN)
                self._lockfile.close()
