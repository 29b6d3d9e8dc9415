"""Online store interface: bounded per-user sequences and item attributes for serving, two backends by config.

Semantics (identical for both backends, and identical to the offline table - tests/feature_store check it):
- A user's sequence holds the history actions of FeatureConfig.history_actions (impressions and other actions are
  accepted by `append` and ignored: they are not history), at most `online_max_len` (L) events, ordered by ts.
- `get_sequences(users, request_ts)` returns, per user, the newest L retained events with ts STRICTLY before the
  request time, oldest first, with time_gap = (request_ts - ts) / 1000 seconds and item attributes (category, ...)
  read from the store's item attributes at get time (like the offline join); ids never put read as
  `online.unknown_item_value`. Unknown users get empty sequences (cold start), never an error.
- Order is (ts, item_id, action, domain), as offline (feature_store.history): equal timestamps are ordered by
  content, so the delivery order never changes a sequence.
- Out-of-order timestamps are ACCEPTED and inserted at their position in that order. The sequence is then trimmed
  to the newest L, so an event older than a full sequence's oldest event is dropped: it could never be among the
  newest L (and a replayed event that was trimmed before is trimmed again). Consequence: answers are exact for
  request times after the newest retained event (the serving case); for an earlier request time the store can only
  return what it retained.
- Duplicates: an event identical in (user_id, ts, item_id, action, domain) to one already stored (or in the same
  batch) is dropped, so replaying a stream (at-least-once delivery) is idempotent. The offline build drops the
  same duplicates (FeatureConfig.dedup).
- Bad input is rejected before anything is stored, with a StoreInputError naming the field (and row): unknown
  fields (anything outside the EVENTS/ITEMS contract), missing or null required fields (ts, user_id, item_id,
  action, domain), values of the wrong type (strings, fractional numbers, bools), unknown action codes, negative
  timestamps. A rejected batch has no effect.
- An `append` that returned is acknowledged: embedded fsyncs its write-ahead log first; Redis has it in the server
  (durable across a server crash only if the server runs with appendonly yes + appendfsync always).
"""
from __future__ import annotations

import abc
import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from feature_store.definitions import FeatureConfig
from feature_store.history import Sequences
from recsys.data.schemas import EVENTS, ITEMS, Action


class StoreInputError(ValueError):
    """An append/put was rejected: the message names the field (and the first bad row)."""


class StoreError(RuntimeError):
    """The store cannot be opened or used (locked by another process, corrupt log, server unreachable)."""


REQUIRED_EVENT_FIELDS = {"ts": np.int64, "user_id": np.int64, "item_id": np.int64, "action": np.int8,
                         "domain": np.int32}
EVENT_DTYPE = np.dtype([("ts", "<i8"), ("item_id", "<i8"), ("action", "i1"), ("domain", "<i4")])
_ACTIONS = {int(a) for a in Action}


@dataclass
class EventBatch:
    """Validated events, history actions only, in the order received."""

    user_id: np.ndarray
    ts: np.ndarray
    item_id: np.ndarray
    action: np.ndarray
    domain: np.ndarray
    received: int  # rows received (incl. non-history actions)

    def __len__(self) -> int:
        return len(self.ts)

    def to_arrow(self) -> pa.RecordBatch:
        return pa.record_batch({"user_id": self.user_id, "ts": self.ts, "item_id": self.item_id,
                                "action": self.action, "domain": self.domain})

    @classmethod
    def from_arrow(cls, b: pa.RecordBatch) -> "EventBatch":
        c = {n: b.column(n).to_numpy() for n in ("user_id", "ts", "item_id", "action", "domain")}
        return cls(received=b.num_rows, **c)

    def by_user(self) -> Iterable[tuple[int, np.ndarray]]:
        """(user, rows of that user as EVENT_DTYPE) per distinct user."""
        order = np.argsort(self.user_id, kind="stable")
        users = self.user_id[order]
        bounds = np.flatnonzero(np.diff(users)) + 1
        rec = np.empty(len(order), dtype=EVENT_DTYPE)
        rec["ts"], rec["item_id"] = self.ts[order], self.item_id[order]
        rec["action"], rec["domain"] = self.action[order], self.domain[order]
        for s, e in zip(np.concatenate([[0], bounds]), np.concatenate([bounds, [len(order)]])):
            if e > s:
                yield int(users[s]), rec[s:e]


def _columns(data: Any, what: str) -> dict[str, list | pa.Array | pa.ChunkedArray | np.ndarray]:
    if isinstance(data, (pa.Table, pa.RecordBatch)):
        return {n: data.column(n) for n in data.schema.names}
    if isinstance(data, Mapping):
        return dict(data)
    if isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
        names: list[str] = []
        for i, r in enumerate(data):
            if not isinstance(r, Mapping):
                raise StoreInputError(f"{what}[{i}]: expected a mapping of field -> value, got {type(r).__name__}")
            names.extend(k for k in r if k not in names)
        return {n: [r.get(n) for r in data] for n in names}
    raise StoreInputError(f"{what}: expected a pyarrow Table/RecordBatch, a mapping of columns or a list of rows, "
                          f"got {type(data).__name__}")


def _to_int(name: str, values: Any, dtype: type, what: str) -> np.ndarray:
    """Strictly integral values -> numpy; names the field and the first bad row otherwise."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        if pa.types.is_timestamp(values.type):
            values = values.cast(pa.timestamp("ms", tz="UTC")).cast(pa.int64())
        if not pa.types.is_integer(values.type):
            raise StoreInputError(f"{what}: field '{name}' has type {values.type}, expected an integer type")
        if values.null_count:
            raise StoreInputError(f"{what}: field '{name}' has {values.null_count} null values")
        arr = values.to_numpy(zero_copy_only=False)
    else:
        seq = list(values) if not isinstance(values, np.ndarray) else values
        if isinstance(seq, np.ndarray):
            if seq.dtype.kind not in "iu":
                raise StoreInputError(f"{what}: field '{name}' has dtype {seq.dtype}, expected integers")
            arr = seq
        else:
            out = np.empty(len(seq), dtype=np.int64)
            for i, v in enumerate(seq):
                if name == "ts" and isinstance(v, dt.datetime):
                    if v.tzinfo is None:
                        raise StoreInputError(f"{what}[{i}]: field 'ts' is a naive datetime (give a UTC-aware one or ms)")
                    v = round(v.timestamp() * 1000)
                if v is None:
                    raise StoreInputError(f"{what}[{i}]: field '{name}' is null (required)")
                if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
                    raise StoreInputError(f"{what}[{i}]: field '{name}' = {v!r} ({type(v).__name__}), expected an integer")
                out[i] = v
            arr = out
    info = np.iinfo(dtype)
    arr = np.asarray(arr)
    if len(arr) and (arr.min() < info.min or arr.max() > info.max):
        i = int(np.flatnonzero((arr < info.min) | (arr > info.max))[0])
        raise StoreInputError(f"{what}[{i}]: field '{name}' = {arr[i]} does not fit {np.dtype(dtype).name}")
    return arr.astype(dtype, copy=False)


def validate_events(data: Any, history_codes: Sequence[int], what: str = "events") -> EventBatch:
    """Check an append batch against the rules in the module docstring; keep only history actions."""
    cols = _columns(data, what)
    unknown = [n for n in cols if n not in EVENTS.names]
    if unknown:
        raise StoreInputError(f"{what}: unknown field(s) {unknown} (allowed: {EVENTS.names})")
    missing = [n for n in REQUIRED_EVENT_FIELDS if n not in cols]
    if missing:
        raise StoreInputError(f"{what}: missing required field(s) {missing}")
    vals = {n: _to_int(n, cols[n], t, what) for n, t in REQUIRED_EVENT_FIELDS.items()}
    n = len(vals["ts"])
    for k, v in vals.items():
        if len(v) != n:
            raise StoreInputError(f"{what}: field '{k}' has {len(v)} values, 'ts' has {n}")
    if n and vals["ts"].min() < 0:
        raise StoreInputError(f"{what}[{int(np.argmin(vals['ts']))}]: field 'ts' is negative (ms since the epoch)")
    bad = ~np.isin(vals["action"], list(_ACTIONS))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise StoreInputError(f"{what}[{i}]: field 'action' = {vals['action'][i]} is not a known action code "
                              f"{sorted(_ACTIONS)}")
    keep = np.isin(vals["action"], list(history_codes))
    return EventBatch(received=n, **{k: v[keep] for k, v in vals.items()})


def validate_items(data: Any, attributes: Sequence[str], what: str = "items") -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """item_id + every configured attribute (integers); other ITEMS contract columns are ignored."""
    cols = _columns(data, what)
    unknown = [c for c in cols if c != "item_id" and c not in attributes and c not in ITEMS.names]
    if unknown:
        raise StoreInputError(f"{what}: unknown field(s) {unknown} (allowed: item_id, {list(attributes)}, "
                              f"and the items contract {ITEMS.names})")
    missing = [c for c in ["item_id", *attributes] if c not in cols]
    if missing:
        raise StoreInputError(f"{what}: missing field(s) {missing}")
    ids = _to_int("item_id", cols["item_id"], np.int64, what)
    attrs = {a: _to_int(a, cols[a], np.int64, what) for a in attributes}
    return ids, attrs


def request_times(user_ids: Any, request_ts: Any) -> tuple[np.ndarray, np.ndarray]:
    users = _to_int("user_id", np.atleast_1d(np.asarray(user_ids)) if not isinstance(user_ids, (pa.Array, pa.ChunkedArray)) else user_ids, np.int64, "get_sequences")
    t = np.asarray(request_ts)
    if t.dtype.kind not in "iu":
        raise StoreInputError(f"get_sequences: request_ts must be integer ms since the epoch, got dtype {t.dtype}")
    t = np.broadcast_to(t.astype(np.int64), users.shape)
    return users, t


def assemble(parts: list[np.ndarray], cutoff: np.ndarray, item_attrs: Mapping[str, np.ndarray]) -> Sequences:
    """Per-user EVENT_DTYPE slices (oldest first) -> Sequences with gaps and item attributes."""
    lens = np.array([len(p) for p in parts], dtype=np.int64)
    offsets = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    rec = np.concatenate(parts) if parts else np.empty(0, EVENT_DTYPE)
    ts = rec["ts"].astype(np.int64)
    gap = (np.repeat(cutoff, lens) - ts).astype(np.float32) * np.float32(0.001)
    attrs = dict(item_attrs)
    cat = attrs.pop("category", np.zeros(len(rec), np.int64))
    return Sequences(offsets=offsets, item_id=rec["item_id"].astype(np.int64), category=cat,
                     action=rec["action"].astype(np.int8), domain=rec["domain"].astype(np.int32), time_gap=gap,
                     ts=ts, attrs=attrs)


class OnlineStore(abc.ABC):
    """Bounded per-user sequences + item attributes; see the module docstring for the rules."""

    def __init__(self, cfg: FeatureConfig):
        self.cfg = cfg
        self.max_len = cfg.online_max_len
        self.history_codes = cfg.history_codes
        self.item_attributes = list(cfg.item_attributes)
        self.seq_attributes = cfg.seq_item_attributes
        self.unknown_item_value = cfg.online.unknown_item_value

    @abc.abstractmethod
    def append(self, events: Any) -> int:
        """Validate and store a batch; returns how many events were newly stored (after ignoring non-history
        actions and duplicates). Returning = acknowledged."""

    @abc.abstractmethod
    def get_sequences(self, user_ids: Any, request_ts: Any) -> Sequences:
        """Per user, the newest L events with ts < request_ts (scalar or one per user, ms), oldest first."""

    @abc.abstractmethod
    def put_items(self, items: Any) -> int:
        """Upsert item attributes (item_id + every configured item attribute)."""

    @abc.abstractmethod
    def get_items(self, item_ids: Any) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """(attribute -> values, found mask) for the ids; missing ids read as unknown_item_value."""

    @abc.abstractmethod
    def close(self) -> None:
        ...

    def __enter__(self) -> "OnlineStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def merge_user(old: np.ndarray, new: np.ndarray, max_len: int) -> tuple[np.ndarray, int]:
    """Merge `new` into `old` (sorted, distinct): np.unique over EVENT_DTYPE sorts by (ts, item_id, action, domain)
    and drops exact duplicates in one step; keep the newest max_len. Returns (merged, distinct new events added)."""
    comb = np.unique(np.concatenate([old, new]) if len(old) else new)
    return comb[-max_len:], len(comb) - len(old)


def open_online_store(cfg: FeatureConfig) -> OnlineStore:
    """The backend named by cfg.online.backend."""
    if cfg.online.backend == "embedded":
        from feature_store.online_embedded import EmbeddedOnlineStore

        return EmbeddedOnlineStore(cfg)
    if cfg.online.backend == "redis":
        from feature_store.online_redis import RedisOnlineStore

        return RedisOnlineStore(cfg)
    raise StoreError(f"online.backend: unknown backend {cfg.online.backend!r}")
