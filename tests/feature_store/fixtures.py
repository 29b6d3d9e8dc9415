"""Small random data dirs (events + items) written through recsys.data.io, and a naive reference implementation."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from recsys.data.io import ts_from_ms, write_table

T0 = 1_700_000_000_000  # ms


def make_events(seed: int = 0, n_users: int = 12, n_items: int = 40, n_hist: int = 600, n_imp: int = 150,
                span_ms: int = 3 * 86_400_000, tie_frac: float = 0.2) -> tuple[pa.Table, pa.Table]:
    """Events with heavy-ish tailed users, many equal timestamps, impressions planted at history timestamps."""
    rng = np.random.default_rng(seed)
    w = rng.pareto(1.2, n_users) + 0.05
    users = rng.choice(np.arange(100, 100 + n_users), size=n_hist, p=w / w.sum())
    ts = T0 + rng.integers(0, span_ms, n_hist)
    # plant ties: copy other events' timestamps (same user -> equal keys)
    k = int(tie_frac * n_hist)
    src = rng.integers(0, n_hist, k)
    dst = rng.integers(0, n_hist, k)
    ts[dst], users[dst] = ts[src], users[src]
    hist = {
        "ts": ts, "user_id": users, "item_id": rng.integers(0, n_items, n_hist),
        "domain": rng.integers(0, 3, n_hist).astype(np.int32), "action": rng.integers(1, 5, n_hist).astype(np.int8),
    }
    # exact duplicates of some events
    d = rng.integers(0, n_hist, max(1, n_hist // 50))
    hist = {c: np.concatenate([v, v[d]]) for c, v in hist.items()}
    # impressions: half at exactly an existing history timestamp of that user (ts == t must not leak)
    iu = rng.choice(np.arange(100, 100 + n_users + 2), size=n_imp)  # +2 users without history
    its = T0 + rng.integers(-3_600_000, span_ms + 3_600_000, n_imp)
    half = rng.random(n_imp) < 0.5
    pick = rng.integers(0, len(hist["ts"]), n_imp)
    iu[half], its[half] = hist["user_id"][pick[half]], hist["ts"][pick[half]]
    n_h = len(hist["ts"])
    events = pa.table({
        "ts": ts_from_ms(np.concatenate([hist["ts"], its])),
        "user_id": pa.array(np.concatenate([hist["user_id"], iu]), pa.int64()),
        "item_id": pa.array(np.concatenate([hist["item_id"], rng.integers(0, n_items, n_imp)]), pa.int64()),
        "domain": pa.array(np.concatenate([hist["domain"], rng.integers(0, 3, n_imp)]), pa.int32()),
        "action": pa.array(np.concatenate([hist["action"], np.zeros(n_imp)]), pa.int8()),
        "request_id": pa.array([None] * n_h + list(range(n_imp)), pa.int64()),
        "position": pa.array([None] * n_h + list(rng.integers(0, 10, n_imp)), pa.int32()),
        "label": pa.array([None] * n_h + list(rng.integers(0, 2, n_imp)), pa.int8()),
        "policy": pa.array([None] * n_h + ["p0"] * n_imp, pa.string()),
        "propensity": pa.array([None] * n_h + list(rng.random(n_imp)), pa.float32()),
    })
    # shuffle rows so nothing depends on the file being sorted
    events = events.take(pa.array(rng.permutation(events.num_rows)))
    items = pa.table({
        "item_id": pa.array(np.arange(n_items), pa.int64()),
        "domain": pa.array(np.zeros(n_items), pa.int32()),
        "category": pa.array(rng.integers(0, 7, n_items) + 1000, pa.int64()),
        "created_ts": ts_from_ms(np.full(n_items, T0 - 1)),
        "price_bucket": pa.array(rng.integers(0, 5, n_items), pa.int64()),
    })
    return events, items


def write_data(root, events: pa.Table, items: pa.Table, parts: int = 2) -> None:
    n = events.num_rows
    for p in range(parts):
        write_table(events.slice(p * n // parts, (p + 1) * n // parts - p * n // parts), root, "events", part=f"part-{p}")
    from recsys.data.io import conform
    import pyarrow.parquet as pq
    # items keep the extra attribute column (write_table would drop it): validate, then write as is
    conform(items, "items")
    (root / "items").mkdir(parents=True, exist_ok=True)
    pq.write_table(items, root / "items" / "part-0.parquet")


def reference_sequences(events: pa.Table, items: pa.Table, user: int, t: int, L: int,
                        history=(1, 2, 3, 4)) -> list[tuple]:
    """Naive: python rows of the user's history with ts < t, sorted by (ts, item, action, domain), exact duplicates
    dropped, newest L."""
    cat = dict(zip(items["item_id"].to_pylist(), items["category"].to_pylist()))
    rows = events.to_pylist()
    seen, out = set(), []
    for r in rows:
        if r["user_id"] != user or r["action"] not in history:
            continue
        ms = int(r["ts"].timestamp() * 1000)
        ident = (ms, r["item_id"], r["action"], r["domain"])
        if ident in seen:
            continue
        seen.add(ident)
        if ms < t:
            out.append((ms, r["item_id"], cat[r["item_id"]], r["action"], r["domain"]))
    out.sort(key=lambda x: (x[0], x[1], x[3], x[4]))
    return out[-L:] if L else []
