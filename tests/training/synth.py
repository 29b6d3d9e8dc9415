"""A small learnable training table (TRAINING schema) for trainer tests: the click probability is a user effect plus
an item effect, so a working trainer's validation AUC rises well above 0.5 within a couple of hundred steps."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from recsys.data.io import write_table

N_ITEMS, N_CATS, N_USERS, N_DOMAINS = 400, 16, 150, 3


def training_rows(n: int, seed: int = 0, max_len: int = 12) -> pa.Table:
    rng = np.random.default_rng(seed)
    lens = rng.integers(0, max_len + 1, n)
    seq_items = [rng.integers(1, N_ITEMS, k) for k in lens]
    seq_cats = [it % N_CATS for it in seq_items]
    item = rng.integers(1, N_ITEMS, n)
    cat = item % N_CATS
    user = rng.integers(0, N_USERS, n)
    # learnable by any embedding model: a user effect plus an item effect (fixed by N_*, not by `seed`)
    fx = np.random.default_rng(12345)
    u_eff, i_eff = fx.normal(0, 1.2, N_USERS), fx.normal(0, 1.2, N_ITEMS)
    p = 1 / (1 + np.exp(-(u_eff[user] + i_eff[item] - 0.5)))
    label = (rng.random(n) < p).astype(np.int8)

    def lists(vals, typ):
        return pa.array([v.tolist() for v in vals], pa.list_(typ))

    return pa.table({
        "request_id": pa.array(np.arange(n, dtype=np.int64)),
        "ts": pa.array(1_700_000_000_000 + np.arange(n, dtype=np.int64) * 1000, pa.timestamp("ms", tz="UTC")),
        "user_id": pa.array(user, pa.int64()),
        "item_id": pa.array(item, pa.int64()),
        "domain": pa.array(rng.integers(0, N_DOMAINS, n), pa.int32()),
        "item_category": pa.array(cat, pa.int64()),
        "label": pa.array(label, pa.int8()),
        "seq_item_id": lists(seq_items, pa.int64()),
        "seq_category": lists(seq_cats, pa.int64()),
        "seq_action": lists([np.ones(k, np.int8) for k in lens], pa.int8()),
        "seq_domain": lists([rng.integers(0, N_DOMAINS, k) for k in lens], pa.int32()),
        "seq_time_gap": lists([rng.random(k).astype(np.float32) * 1e4 for k in lens], pa.float32()),
    })


def write_training_table(root: str | Path, n: int = 4000, seed: int = 0) -> Path:
    """Writes ROOT/training/part-0.parquet; returns ROOT (what `--data` accepts)."""
    write_table(training_rows(n, seed), root, "training")
    return Path(root)
