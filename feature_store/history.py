"""Point-in-time user sequences: the one implementation behind the offline build, replay and serving backfills.

Rule (shared with the online stores): the sequence of user u at time t is u's history events (actions listed in
FeatureConfig.history_actions) with ts STRICTLY before t, the newest L of them, ordered oldest first. Order is the total order (ts, item_id, action, domain): equal timestamps are ordered by
content, not by arrival, so the result never depends on file order or on the order a stream delivered events (and a
replayed event lands exactly where it was). An event identical in (user, ts, item_id, action, domain) to another is
a duplicate; one copy is kept when `dedup` is on. time_gap = (t - event ts) in seconds (float32, always > 0).

How it is fast (PERF-NOTES.md): events are sorted once by a packed int64 key (dense user index << ts_bits | ts - ts0);
then for any batch of (user, t) pairs, `searchsorted(key, pack(user, t), side='left')` is the end of the window
("strictly before" for free), start = max(user's first row, end - L), and every column is gathered with one flat
index built from `repeat` + `arange` (no per-row Python). The sort is an `argsort` of the packed key, then only the
rare runs of equal keys (same user and ms) are re-ordered by (item_id, action, domain) with a small lexsort.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsys.data.io import DataError

SEQ_COLUMNS = {"item_id": "seq_item_id", "category": "seq_category", "action": "seq_action", "domain": "seq_domain",
               "time_gap": "seq_time_gap"}
ARROW_TYPES = {"item_id": pa.int64(), "category": pa.int64(), "action": pa.int8(), "domain": pa.int32(),
               "time_gap": pa.float32()}


@dataclass
class Sequences:
    """A batch of sequences as flat values + offsets (row i = values[offsets[i]:offsets[i+1]]), oldest first.

    Same fields as the training table's seq_* columns; `to_arrow()` gives those list columns, ready for
    `recsys.data.batch.build_batch` once joined with the candidate's columns.
    """

    offsets: np.ndarray  # int64 [n+1]
    item_id: np.ndarray  # int64
    category: np.ndarray  # int64
    action: np.ndarray  # int8
    domain: np.ndarray  # int32
    time_gap: np.ndarray  # float32 seconds
    ts: np.ndarray | None  # int64 ms event times (not a training column; None when the builder skipped it)
    attrs: dict[str, np.ndarray] = field(default_factory=dict)  # extra item attributes along the sequence

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def row(self, i: int) -> dict[str, np.ndarray]:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        out = {k: getattr(self, k)[a:b] for k in ("item_id", "category", "action", "domain", "time_gap", "ts")
               if getattr(self, k) is not None}
        out.update({k: v[a:b] for k, v in self.attrs.items()})
        return out

    def to_arrow(self) -> dict[str, pa.ListArray]:
        """seq_* list columns (contract names; extra attributes as seq_<attr>)."""
        off = pa.array(self.offsets.astype(np.int32, copy=False), type=pa.int32())
        cols = {}
        for k, name in SEQ_COLUMNS.items():
            cols[name] = pa.ListArray.from_arrays(off, pa.array(getattr(self, k), type=ARROW_TYPES[k]))
        for k, v in self.attrs.items():
            cols[f"seq_{k}"] = pa.ListArray.from_arrays(off, pa.array(v))
        return cols


def flat_index(starts: np.ndarray, lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated arange(starts[i], starts[i]+lens[i]) and the output offsets, without a Python loop."""
    offsets = np.zeros(len(lens) + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    total = int(offsets[-1])
    idx = np.arange(total, dtype=np.int64)
    idx += np.repeat(starts.astype(np.int64, copy=False) - offsets[:-1], lens)
    return idx, offsets


class ItemAttributes:
    """Item id -> attribute values by binary search over sorted ids (vectorised lookups)."""

    def __init__(self, item_ids: np.ndarray, values: Mapping[str, np.ndarray]):
        item_ids = np.asarray(item_ids, dtype=np.int64)
        order = np.argsort(item_ids, kind="stable")
        ids = item_ids[order]
        if len(ids) > 1 and (ids[1:] == ids[:-1]).any():
            dup = ids[1:][ids[1:] == ids[:-1]][:5]
            raise DataError(f"items: duplicate item_id values {dup.tolist()}")
        self.ids = ids
        self.values = {k: np.asarray(v)[order] for k, v in values.items()}

    def lookup(self, name: str, item_ids: np.ndarray, missing: str = "error", fill: int = 0,
               source: str = "events") -> np.ndarray:
        vals = self.values[name]
        if len(self.ids) == 0:
            pos = np.zeros(len(item_ids), dtype=np.int64)
            found = np.zeros(len(item_ids), dtype=bool)
        else:
            pos = np.searchsorted(self.ids, item_ids)
            np.minimum(pos, len(self.ids) - 1, out=pos)
            found = self.ids[pos] == item_ids
        if found.all():
            return vals[pos]
        if missing == "error":
            bad = np.unique(np.asarray(item_ids)[~found])
            raise DataError(
                f"{source}: {len(bad)} item_id values are missing from the items table, e.g. {bad[:5].tolist()} "
                "(set on_unknown_item: fill to use unknown_item_value)"
            )
        out = vals[pos] if len(self.ids) else np.zeros(len(item_ids), dtype=vals.dtype)
        out[~found] = fill
        return out


class SortedHistory:
    """History events sorted once by (user, ts); answers point-in-time windows for any (user, t) batch."""

    def __init__(self, user_ids: np.ndarray, ts: np.ndarray, item_id: np.ndarray, action: np.ndarray,
                 domain: np.ndarray, attrs: Mapping[str, np.ndarray] | None = None, dedup: bool = True):
        cols = {"user_id": user_ids, "ts": ts, "item_id": item_id, "action": action, "domain": domain}
        self._build(cols, dict(attrs or {}), dedup)

    @classmethod
    def consume(cls, cols: dict[str, np.ndarray], attrs: dict[str, np.ndarray], dedup: bool = True) -> "SortedHistory":
        """Build from columns the caller hands over: `cols`/`attrs` are emptied as they are sorted, so each input
        array is freed as soon as its sorted copy exists (peak ~45 bytes per event instead of twice the input)."""
        self = cls.__new__(cls)
        self._build(cols, attrs, dedup)
        return self

    def _build(self, cols: dict[str, np.ndarray], attrs: dict[str, np.ndarray], dedup: bool) -> None:
        n = len(cols["ts"])
        for name in ("user_id", "item_id", "action", "domain", *attrs):
            a = cols.get(name, attrs.get(name))
            if len(a) != n:
                raise DataError(f"history column '{name}' has {len(a)} rows, ts has {n}")
        user_ids = np.asarray(cols.pop("user_id"), dtype=np.int64)
        ts = np.asarray(cols.pop("ts"), dtype=np.int64)
        self.users = np.unique(user_ids)  # sorted distinct user ids -> dense index
        self.ts0 = int(ts.min()) if n else 0
        span = int(ts.max()) - self.ts0 if n else 0
        self.ts_bits = max(span + 1, 1).bit_length()
        user_bits = 63 - self.ts_bits
        if len(self.users) + 1 >= (1 << user_bits):
            raise DataError(
                f"events: {len(self.users)} users over a {span} ms time span do not fit a packed int64 key "
                f"({user_bits} bits left for users)"
            )
        uidx = np.searchsorted(self.users, user_ids)
        del user_ids
        key = ts - self.ts0
        del ts
        uidx <<= self.ts_bits
        key |= uidx
        del uidx
        perm = np.argsort(key)
        key = key[perm]
        self.item_id = np.asarray(cols.pop("item_id"), dtype=np.int64)[perm]
        self.action = np.asarray(cols.pop("action"), dtype=np.int8)[perm]
        self.domain = np.asarray(cols.pop("domain"), dtype=np.int32)[perm]
        self.attrs = {}
        for k in list(attrs):
            self.attrs[k] = np.asarray(attrs.pop(k))[perm]
        del perm
        self.key = key
        self.n_duplicates = 0
        if n > 1:
            self._order_ties(dedup)
        # first row of each dense user (users with no rows cannot occur: users come from these rows)
        self.user_start = np.searchsorted(self.key, np.arange(len(self.users), dtype=np.int64) << self.ts_bits)
        self.mask = (1 << self.ts_bits) - 1

    def _order_ties(self, dedup: bool) -> None:
        """Rows sharing a key (same user and ts) are put in (item_id, action, domain) order; exact duplicates, which
        then sit next to each other, are dropped when `dedup`. Only rows inside runs of equal keys are touched."""
        tie = self.key[1:] == self.key[:-1]
        if not tie.any():
            return
        in_run = np.zeros(len(self.key), dtype=bool)
        in_run[1:] |= tie
        in_run[:-1] |= tie
        rows = np.flatnonzero(in_run)
        run_id = np.cumsum(np.concatenate([[True], ~tie]))[rows]
        order = np.lexsort((self.domain[rows], self.action[rows], self.item_id[rows], run_id))
        r = rows[order]  # the run's rows in canonical order; written back into the run's own slots
        for name in ("item_id", "action", "domain"):
            col = getattr(self, name)
            col[rows] = col[r]
        for v in self.attrs.values():
            v[rows] = v[r]
        if not dedup:
            return
        same = np.zeros(len(self.key), dtype=bool)
        same[1:] = tie & (self.item_id[1:] == self.item_id[:-1]) & (self.action[1:] == self.action[:-1]) \
            & (self.domain[1:] == self.domain[:-1])
        if not same.any():
            return
        keep = ~same
        self.n_duplicates = int(same.sum())
        self.key = self.key[keep]
        self.item_id, self.action, self.domain = self.item_id[keep], self.action[keep], self.domain[keep]
        self.attrs = {k: v[keep] for k, v in self.attrs.items()}

    def __len__(self) -> int:
        return len(self.key)

    @property
    def ts(self) -> np.ndarray:
        return (self.key & self.mask) + self.ts0

    def window(self, user_ids: np.ndarray, cutoff_ts: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """(start row, length) of the newest `max_len` events strictly before cutoff_ts, per (user, cutoff) pair."""
        user_ids = np.asarray(user_ids, dtype=np.int64)
        cutoff_ts = np.asarray(cutoff_ts, dtype=np.int64)
        if len(self.users) == 0:
            z = np.zeros(len(user_ids), dtype=np.int64)
            return z, z.copy()
        uidx = np.searchsorted(self.users, user_ids)
        np.minimum(uidx, len(self.users) - 1, out=uidx)
        known = self.users[uidx] == user_ids
        # rel in [0, 2**ts_bits]: 2**ts_bits packs to the next user's first key, i.e. "all of this user's events"
        rel = np.clip(cutoff_ts - self.ts0, 0, 1 << self.ts_bits)
        end = np.searchsorted(self.key, (uidx << self.ts_bits) + rel, side="left")
        first = self.user_start[uidx]
        start = np.maximum(first, end - max_len)
        lens = np.where(known, end - start, 0)
        return start, lens

    def gather(self, starts: np.ndarray, lens: np.ndarray, cutoff_ts: np.ndarray, user_ids: np.ndarray | None = None,
               with_ts: bool = True) -> Sequences:
        """The events of the given windows, flat, with time gaps against each row's cutoff.

        The gap is computed on packed keys: pack(user, cutoff) - key = cutoff - ts for rows of the same user, so one
        repeat and one subtraction replace unpacking the timestamps (the offline build skips `ts` entirely)."""
        idx, offsets = flat_index(starts, lens)
        cutoff = np.asarray(cutoff_ts, dtype=np.int64)
        if user_ids is None:  # only the gaps need the user: recover the dense index from the window start
            uidx = np.searchsorted(self.user_start, starts, side="right") - 1
        else:
            uidx = np.minimum(np.searchsorted(self.users, np.asarray(user_ids, dtype=np.int64)), max(len(self.users) - 1, 0))
        qkey = (uidx.astype(np.int64) << self.ts_bits) + (cutoff - self.ts0)
        gap_ms = np.repeat(qkey, lens)
        gap_ms -= self.key.take(idx)
        time_gap = gap_ms.astype(np.float32)
        time_gap *= np.float32(0.001)
        ts = None
        if with_ts:
            ts = np.repeat(cutoff, lens)
            ts -= gap_ms
        del gap_ms
        return Sequences(
            offsets=offsets,
            item_id=self.item_id.take(idx),
            category=self.attrs["category"].take(idx) if "category" in self.attrs else np.zeros(len(idx), np.int64),
            action=self.action.take(idx),
            domain=self.domain.take(idx),
            time_gap=time_gap,
            ts=ts,
            attrs={k: v.take(idx) for k, v in self.attrs.items() if k != "category"},
        )

    def sequences(self, user_ids: np.ndarray, cutoff_ts: np.ndarray, max_len: int, with_ts: bool = True) -> Sequences:
        starts, lens = self.window(user_ids, cutoff_ts, max_len)
        return self.gather(starts, lens, cutoff_ts, user_ids, with_ts)


def _ts_ms(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    if pa.types.is_timestamp(col.type):
        col = pc.cast(col, pa.timestamp("ms", tz="UTC")).cast(pa.int64())
    return np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.int64)


def history_from_table(events: pa.Table, history_codes: list[int], items: ItemAttributes | None = None,
                       seq_attrs: list[str] = ("category",), dedup: bool = True, on_unknown_item: str = "error",
                       unknown_item_value: int = 0) -> SortedHistory:
    """Build a SortedHistory from an events table (contract columns), keeping only the history actions."""
    events = events.filter(pc.is_in(events["action"], pa.array(history_codes, type=pa.int8())))
    col = lambda n: events[n].to_numpy(zero_copy_only=False)  # noqa: E731
    item = np.asarray(col("item_id"), dtype=np.int64)
    attrs = {}
    if items is not None:
        for a in seq_attrs:
            attrs[a] = items.lookup(a, item, on_unknown_item, unknown_item_value, source="events (history)")
    return SortedHistory(col("user_id"), _ts_ms(events["ts"]), item, col("action"), col("domain"), attrs, dedup)


def sequences_at(events: pa.Table | SortedHistory, user_ids, cutoff_ts, max_len: int = 1000,
                 history_codes: list[int] = (1, 2, 3, 4), items: ItemAttributes | None = None) -> Sequences:
    """Point-in-time sequences for arbitrary (user, t) pairs: the newest `max_len` history events with ts < t.

    `events` is an events table (contract columns; filtered to `history_codes`) or a prebuilt SortedHistory (reuse it
    for many queries: building sorts the events). cutoff_ts: int64 ms since the epoch, one per user (or a scalar).
    Used by the offline builder per chunk, by replay, and as the reference the online stores are checked against.
    """
    hist = events if isinstance(events, SortedHistory) else history_from_table(events, list(history_codes), items)
    user_ids = np.atleast_1d(np.asarray(user_ids, dtype=np.int64))
    cutoff = np.broadcast_to(np.asarray(cutoff_ts, dtype=np.int64), user_ids.shape)
    return hist.sequences(user_ids, cutoff, max_len)
