"""bench_quality's reference row: the recency-weighted category share equals a per-row loop."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from feature_reference import recency_share  # noqa: E402


def test_recency_share_matches_a_loop():
    rng = np.random.default_rng(0)
    hist = [rng.integers(0, 4, int(k)).tolist() for k in rng.integers(0, 12, 50)]
    cand = rng.integers(0, 4, 50)
    table = pa.table({"seq_category": pa.array(hist, pa.list_(pa.int64())), "item_category": pa.array(cand, pa.int64())})
    for max_len, decay in [(100, 0.85), (3, 0.5), (5, 1.0)]:
        want = []
        for h, c in zip(hist, cand):
            recent = h[::-1][:max_len]  # newest first
            w = np.array([decay**j for j in range(len(recent))])
            want.append(float((w * (np.array(recent) == c)).sum() / w.sum()) if recent else 0.0)
        np.testing.assert_allclose(recency_share(table, max_len, decay), want, rtol=1e-12, atol=1e-12)
