"""`recsys data inspect DIR`: what is in a data directory, at a glance.

Why: before training or replaying, a user needs to see whether the logs look sane: sizes, id ranges, time span,
how long user histories are (the long-sequence models need thousands of events) and the click rate per domain.
Events are streamed in record batches (memory bounded by the number of distinct users/items, not of events).
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys.data.io import DataError, iter_batches, list_files
from recsys.data.schemas import TABLES, Action

_DENSE_LIMIT = 50_000_000  # ids below this are counted with bincount, larger ones with unique


class _IdCounter:
    """Events per id, exact, for dense or sparse int64 ids."""

    def __init__(self) -> None:
        self.dense = np.zeros(0, np.int64)
        self.sparse: list[tuple[np.ndarray, np.ndarray]] = []

    def add(self, ids: np.ndarray, weights: np.ndarray | None = None) -> None:
        if ids.size == 0:
            return
        if ids.min() >= 0 and ids.max() < _DENSE_LIMIT:
            c = np.bincount(ids, weights=weights, minlength=self.dense.size).astype(np.int64)
            c[: self.dense.size] += self.dense
            self.dense = c
        else:
            u, inv = np.unique(ids, return_inverse=True)
            self.sparse.append((u, np.bincount(inv, weights=weights).astype(np.int64)))

    def counts(self) -> np.ndarray:
        """Counts of the ids seen at least once (order unspecified)."""
        parts_ids = [np.flatnonzero(self.dense)] + [u for u, _ in self.sparse]
        parts_cnt = [self.dense[self.dense > 0]] + [c for _, c in self.sparse]
        ids = np.concatenate(parts_ids) if parts_ids else np.zeros(0, np.int64)
        cnt = np.concatenate(parts_cnt) if parts_cnt else np.zeros(0, np.int64)
        if not self.sparse:
            return cnt
        u, inv = np.unique(ids, return_inverse=True)
        return np.bincount(inv, weights=cnt, minlength=u.size).astype(np.int64)


def _percentiles(x: np.ndarray) -> dict[str, float]:
    if x.size == 0:
        return {"p50": 0, "p90": 0, "p99": 0, "max": 0, "mean": 0.0}
    p50, p90, p99 = np.percentile(x, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "max": int(x.max()), "mean": float(x.mean())}


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc).isoformat(timespec="seconds")


def inspect_data(root: str | Path) -> dict[str, Any]:
    """Summary of a data directory: table sizes, users, items, domains, time range, sequence lengths, CTR by domain."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a data directory")
    tables: dict[str, dict[str, int]] = {}
    for name in TABLES:
        if not (root / name).exists():
            continue
        files = list_files(root, name)
        rows = 0
        for f in files:
            try:
                rows += pq.ParquetFile(f).metadata.num_rows
            except Exception as e:  # noqa: BLE001 - any unreadable file is reported as such
                raise DataError(f"{f}: not a readable parquet file ({e})") from None
        tables[name] = {"files": len(files), "rows": rows}
    if "events" not in tables:
        raise DataError(f"{root}: no events table (expected {root / 'events'}/dt=YYYY-MM-DD/*.parquet)")

    all_per_user, eng_per_user, items = _IdCounter(), _IdCounter(), _IdCounter()
    n_actions = np.zeros(256, np.int64)
    dom_imp = np.zeros(0, np.int64)
    dom_clk = np.zeros(0, np.int64)
    dom_events = np.zeros(0, np.int64)
    ts_min, ts_max = None, None
    for b in iter_batches(root, "events", columns=["ts", "user_id", "item_id", "domain", "action", "label"]):
        ts = b.column(0).cast("int64").to_numpy(zero_copy_only=False)
        user = b.column(1).to_numpy(zero_copy_only=False)
        item = b.column(2).to_numpy(zero_copy_only=False)
        dom = b.column(3).to_numpy(zero_copy_only=False).astype(np.int64)
        act = b.column(4).to_numpy(zero_copy_only=False).astype(np.int64)
        label = np.asarray(pc.fill_null(b.column(5), -1).to_numpy(zero_copy_only=False), dtype=np.int64)
        if ts.size:
            ts_min = int(ts.min()) if ts_min is None else min(ts_min, int(ts.min()))
            ts_max = int(ts.max()) if ts_max is None else max(ts_max, int(ts.max()))
        all_per_user.add(user)
        eng = act != int(Action.IMPRESSION)
        eng_per_user.add(user[eng])
        items.add(item)
        n_actions += np.bincount(act & 0xFF, minlength=256)
        imp = (~eng) & (label >= 0)
        k = int(dom.max()) + 1 if dom.size else 0
        dom_events = _grow_add(dom_events, np.bincount(dom, minlength=k)) if dom.size else dom_events
        if imp.any():
            dom_imp = _grow_add(dom_imp, np.bincount(dom[imp], minlength=k))
            dom_clk = _grow_add(dom_clk, np.bincount(dom[imp], weights=label[imp], minlength=k).astype(np.int64))
    seq_all = all_per_user.counts()
    seq_eng = eng_per_user.counts()
    names = {int(a): a.name.lower() for a in Action}
    ctr = {
        int(d): {"impressions": int(dom_imp[d]), "clicks": int(dom_clk[d]), "ctr": float(dom_clk[d] / dom_imp[d])}
        for d in range(dom_imp.size)
        if dom_imp[d] > 0
    }
    total_imp, total_clk = int(dom_imp.sum()), int(dom_clk.sum())
    return {
        "path": str(root),
        "tables": tables,
        "events": int(tables["events"]["rows"]),
        "users": int(seq_all.size),
        "items": int(items.counts().size),
        "domains": [int(d) for d in np.flatnonzero(dom_events)],
        "time_range": {"min": _iso(ts_min), "max": _iso(ts_max), "days": round((ts_max - ts_min) / 86_400_000, 2) if ts_min is not None else 0},
        "actions": {names.get(a, str(a)): int(n_actions[a]) for a in np.flatnonzero(n_actions)},
        "seq_len": _percentiles(seq_all),
        "seq_len_engagement": _percentiles(seq_eng),
        "users_with_2000_plus": int((seq_all >= 2000).sum()),
        "ctr_by_domain": ctr,
        "ctr": total_clk / total_imp if total_imp else None,
    }


def _grow_add(acc: np.ndarray, add: np.ndarray) -> np.ndarray:
    out = np.zeros(max(acc.size, add.size), np.int64)
    out[: acc.size] += acc
    out[: add.size] += add.astype(np.int64)
    return out


def print_summary(s: dict[str, Any]) -> None:
    """Render the summary as rich tables on stdout."""
    from rich.console import Console
    from rich.table import Table

    con = Console()
    t = Table(title=f"data: {s['path']}", show_header=True)
    t.add_column("table")
    t.add_column("files", justify="right")
    t.add_column("rows", justify="right")
    for name, v in s["tables"].items():
        t.add_row(name, str(v["files"]), f"{v['rows']:,}")
    con.print(t)
    g = Table(show_header=False, title="overview")
    g.add_column("what")
    g.add_column("value")
    tr = s["time_range"]
    g.add_row("users / items", f"{s['users']:,} / {s['items']:,}")
    g.add_row("domains", ", ".join(map(str, s["domains"])))
    g.add_row("time range", f"{tr['min']} .. {tr['max']} ({tr['days']} days)")
    g.add_row("actions", ", ".join(f"{k}={v:,}" for k, v in s["actions"].items()))
    for key, label in (("seq_len", "events per user"), ("seq_len_engagement", "non-impression events per user")):
        p = s[key]
        g.add_row(label, f"p50={p['p50']:.0f} p90={p['p90']:.0f} p99={p['p99']:.0f} max={p['max']:,} mean={p['mean']:.1f}")
    g.add_row("users with >= 2000 events", str(s["users_with_2000_plus"]))
    g.add_row("overall CTR (impressions)", f"{s['ctr']:.4f}" if s["ctr"] is not None else "no labelled impressions")
    con.print(g)
    if s["ctr_by_domain"]:
        c = Table(title="click rate per domain (impressions)")
        for col in ("domain", "impressions", "clicks", "ctr"):
            c.add_column(col, justify="right")
        for d, v in s["ctr_by_domain"].items():
            c.add_row(str(d), f"{v['impressions']:,}", f"{v['clicks']:,}", f"{v['ctr']:.4f}")
        con.print(c)
