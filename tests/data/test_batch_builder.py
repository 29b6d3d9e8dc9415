"""build_batch round trip: KJT values and lengths equal the source rows; truncation keeps the newest max_len."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from recsys.data.batch import CONTEXT_KEYS, SEQ_KEYS, BatchSpec, build_batch
from recsys.data.io import conform

T0 = 1_704_067_200_000


def _rows(lengths: list[int], seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    n = len(lengths)
    seq = {
        "seq_item_id": [rng.integers(0, 10_000, L).tolist() for L in lengths],
        "seq_category": [rng.integers(0, 50, L).tolist() for L in lengths],
        "seq_action": [rng.integers(0, 5, L).tolist() for L in lengths],
        "seq_domain": [rng.integers(0, 3, L).tolist() for L in lengths],
        "seq_time_gap": [np.sort(rng.random(L) * 1000)[::-1].astype(np.float32).tolist() for L in lengths],
    }
    t = pa.table(
        {
            "request_id": pa.array(np.arange(n), pa.int64()),
            "ts": pa.array(T0 + np.arange(n) * 1000, pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
            "user_id": pa.array(rng.integers(0, 1000, n), pa.int64()),
            "item_id": pa.array(rng.integers(0, 10_000, n), pa.int64()),
            "domain": pa.array(rng.integers(0, 3, n), pa.int32()),
            "item_category": pa.array(rng.integers(0, 50, n), pa.int64()),
            "position": pa.array(np.zeros(n), pa.int32()),
            "label": pa.array(rng.integers(0, 2, n), pa.int8()),
            "policy": pa.array(["logging"] * n),
            "propensity": pa.array(np.full(n, 0.25), pa.float32()),
            "seq_item_id": pa.array(seq["seq_item_id"], pa.list_(pa.int64())),
            "seq_category": pa.array(seq["seq_category"], pa.list_(pa.int64())),
            "seq_action": pa.array(seq["seq_action"], pa.list_(pa.int8())),
            "seq_domain": pa.array(seq["seq_domain"], pa.list_(pa.int32())),
            "seq_time_gap": pa.array(seq["seq_time_gap"], pa.list_(pa.float32())),
        }
    )
    return conform(t, "training")


def _split(values: torch.Tensor, lengths: torch.Tensor) -> list[list]:
    out, o = [], 0
    for L in lengths.tolist():
        out.append(values[o : o + L].tolist())
        o += L
    return out


@pytest.mark.parametrize("max_len", [1000, 7])
def test_round_trip_values_and_lengths(max_len):
    lengths = [0, 3, 12, 1, 25, 7]
    rows = _rows(lengths)
    b = build_batch(rows, BatchSpec(max_len=max_len))
    expect_len = [min(L, max_len) for L in lengths]
    assert b.seq_lengths.tolist() == expect_len
    d = b.sparse.to_dict()
    for k in SEQ_KEYS[:4]:
        src = rows.column(k).to_pylist()
        got = _split(d[k].values(), d[k].lengths())
        assert d[k].lengths().tolist() == expect_len
        # newest last: truncation keeps the last max_len elements (values < vocab sizes, so no modulo here)
        assert got == [s[len(s) - m :] if m else [] for s, m in zip(src, expect_len)]
    gaps = _split(b.seq_time_gap, b.seq_lengths)
    src = rows.column("seq_time_gap").to_pylist()
    assert gaps == [s[len(s) - m :] if m else [] for s, m in zip(src, expect_len)]
    assert d["item_id"].values().tolist() == rows.column("item_id").to_pylist()
    assert d["item_category"].values().tolist() == rows.column("item_category").to_pylist()
    assert d["item_id"].lengths().tolist() == [1] * rows.num_rows
    c = b.context.to_dict()
    assert list(b.context.keys()) == list(CONTEXT_KEYS)
    assert c["user_id"].values().tolist() == rows.column("user_id").to_pylist()
    assert c["domain"].values().tolist() == rows.column("domain").to_pylist()
    assert b.labels.tolist() == [float(x) for x in rows.column("label").to_pylist()]
    assert b.ts.tolist() == rows.column("ts").cast("int64").to_pylist()
    assert b.labels.dtype == torch.float32 and b.seq_lengths.dtype == torch.int64
    # jagged, never padded: the values hold exactly sum(lengths) elements
    assert d["seq_item_id"].values().numel() == sum(expect_len)


def test_ids_are_taken_modulo_the_vocabulary():
    rows = _rows([4, 2])
    spec = BatchSpec(max_len=10, vocab_sizes={"item": 97, "category": 5, "action": 8, "domain": 16, "user": 13})
    b = build_batch(rows, spec)
    d = b.sparse.to_dict()
    flat = [x for s in rows.column("seq_item_id").to_pylist() for x in s]
    assert d["seq_item_id"].values().tolist() == [x % 97 for x in flat]
    assert b.context.to_dict()["user_id"].values().tolist() == [u % 13 for u in rows.column("user_id").to_pylist()]
    assert b.user_id.tolist() == rows.column("user_id").to_pylist()  # raw ids kept for GAUC


def test_select_equals_building_the_selected_rows():
    rows = _rows([5, 0, 9, 3, 11], seed=3)
    spec = BatchSpec(max_len=6)
    idx = [4, 0, 2]
    a = build_batch(rows, spec).select(torch.tensor(idx))
    b = build_batch(rows.take(idx), spec)
    for k in a.sparse.keys():
        assert torch.equal(a.sparse[k].values(), b.sparse[k].values()) and torch.equal(a.sparse[k].lengths(), b.sparse[k].lengths())
    assert torch.equal(a.seq_time_gap, b.seq_time_gap) and torch.equal(a.labels, b.labels) and torch.equal(a.ts, b.ts)


def test_mismatched_sequence_lengths_are_refused():
    rows = _rows([3, 2])
    bad = rows.set_column(rows.schema.get_field_index("seq_action"), "seq_action", pa.array([[1, 2], [1]], pa.list_(pa.int8())))
    with pytest.raises(ValueError, match="seq_action"):
        build_batch(bad, BatchSpec())
