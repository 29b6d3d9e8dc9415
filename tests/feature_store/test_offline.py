"""Offline training table: point-in-time correctness against a naive reference, planted future events, chunking."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from feature_store.definitions import load_feature_config
from feature_store.history import sequences_at, history_from_table, ItemAttributes
from feature_store.offline import build_training_table
from recsys.config import ConfigError
from recsys.data.batch import BatchSpec, build_batch
from recsys.data.io import DataError, read_table, ts_from_ms, write_table
from tests.feature_store.fixtures import T0, make_events, reference_sequences, write_data


def _cfg(**kw):
    return load_feature_config(None, [f"{k}={v}" for k, v in kw.items()] + ["progress=false"])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    events, items = make_events(seed=1)
    write_data(root, events, items)
    return root, read_table(root, "events"), items


def _rows(table: pa.Table) -> list[dict]:
    return table.sort_by([("ts", "ascending"), ("user_id", "ascending"), ("request_id", "ascending")]).to_pylist()


def test_matches_naive_reference(data, tmp_path):
    root, events, items = data
    L = 7
    summary = build_training_table(root, tmp_path, _cfg(max_len=L, chunk_size=16))
    out = read_table(tmp_path, "training")
    assert out.num_rows == summary["impressions"] == events.filter(pa.compute.equal(events["action"], 0)).num_rows
    assert summary["duplicates_dropped"] > 0
    cats = dict(zip(items["item_id"].to_pylist(), items["category"].to_pylist()))
    n_full = n_empty = 0
    for r in out.to_pylist():
        t = int(r["ts"].timestamp() * 1000)
        ref = reference_sequences(events, items, r["user_id"], t, L)
        assert r["seq_item_id"] == [x[1] for x in ref]
        assert r["seq_category"] == [x[2] for x in ref]
        assert r["seq_action"] == [x[3] for x in ref]
        assert r["seq_domain"] == [x[4] for x in ref]
        np.testing.assert_allclose(r["seq_time_gap"], [(t - x[0]) / 1000 for x in ref], rtol=1e-6)
        assert all(g > 0 for g in r["seq_time_gap"])  # ts strictly before t
        assert r["item_category"] == cats[r["item_id"]]
        n_full += len(ref) == L
        n_empty += len(ref) == 0
    assert n_full > 10 and n_empty > 0  # the data exercises both truncation and empty histories


def test_planted_future_events_never_leak(tmp_path):
    """Events at exactly t and after t (same user) must not appear; the event 1 ms before t must."""
    t = T0 + 10_000
    hist_ts = [T0, t - 1, t, t, t + 1, t + 10_000]
    n = len(hist_ts)
    events = pa.table({
        "ts": ts_from_ms(hist_ts + [t]), "user_id": pa.array([7] * (n + 1), pa.int64()),
        "item_id": pa.array([1, 2, 3, 4, 5, 6, 9], pa.int64()), "domain": pa.array([0] * (n + 1), pa.int32()),
        "action": pa.array([1] * n + [0], pa.int8()), "request_id": pa.array([None] * n + [42], pa.int64()),
        "label": pa.array([None] * n + [1], pa.int8()),
    })
    items = pa.table({"item_id": pa.array(range(10), pa.int64()), "domain": pa.array([0] * 10, pa.int32()),
                      "category": pa.array(range(10), pa.int64()), "created_ts": ts_from_ms([T0] * 10)})
    write_table(events, tmp_path / "d", "events")
    write_table(items, tmp_path / "d", "items")
    build_training_table(tmp_path / "d", tmp_path / "o", _cfg(max_len=100))
    (row,) = read_table(tmp_path / "o", "training").to_pylist()
    assert row["seq_item_id"] == [1, 2]
    assert row["seq_time_gap"] == pytest.approx([10.0, 0.001])


def test_chunk_size_independence(data, tmp_path):
    root, _, _ = data
    outs = []
    for i, (chunk, writers, comp) in enumerate([(1000, 1, "lz4"), (17, 2, "zstd"), (1, 3, "none")]):
        build_training_table(root, tmp_path / str(i), _cfg(max_len=5, chunk_size=chunk, writer_threads=writers,
                                                             compression=comp))
        outs.append(read_table(tmp_path / str(i), "training"))
    assert outs[0].num_rows > 0
    for o in outs[1:]:
        assert o.equals(outs[0])  # same rows in the same (time) order, whatever the chunking


def test_user_shards_same_rows(data, tmp_path):
    root, _, _ = data
    key = [("ts", "ascending"), ("user_id", "ascending"), ("request_id", "ascending")]
    build_training_table(root, tmp_path / "a", _cfg(max_len=5))
    s = build_training_table(root, tmp_path / "b", _cfg(max_len=5, user_shards=4, chunk_size=7))
    a = read_table(tmp_path / "a", "training")
    b = read_table(tmp_path / "b", "training")
    assert s["user_shards"] == 4 and s["files"] > 4
    assert b.sort_by(key).equals(a.sort_by(key)) and a.num_rows > 0
    with pytest.raises(ConfigError, match="power of two"):
        _cfg(user_shards=3)


def test_no_impressions_gives_empty_table(tmp_path):
    events = pa.table({"ts": ts_from_ms([T0]), "user_id": pa.array([1], pa.int64()), "item_id": pa.array([0], pa.int64()),
                       "domain": pa.array([0], pa.int32()), "action": pa.array([1], pa.int8())})
    items = pa.table({"item_id": pa.array([0], pa.int64()), "domain": pa.array([0], pa.int32()),
                      "category": pa.array([3], pa.int64()), "created_ts": ts_from_ms([T0])})
    write_table(events, tmp_path / "d", "events")
    write_table(items, tmp_path / "d", "items")
    for shards in (1, 2):
        s = build_training_table(tmp_path / "d", tmp_path / f"o{shards}", _cfg(user_shards=shards))
        assert s["impressions"] == 0
        assert read_table(tmp_path / f"o{shards}", "training").num_rows == 0


def test_sequences_at_shared_with_offline(data, tmp_path):
    root, events, items = data
    build_training_table(root, tmp_path, _cfg(max_len=4, chunk_size=10))
    out = read_table(tmp_path, "training")
    hist = history_from_table(events, [1, 2, 3, 4], ItemAttributes(items["item_id"].to_numpy(),
                                                                   {"category": items["category"].to_numpy()}))
    ts = out["ts"].cast(pa.int64()).to_numpy()
    seqs = sequences_at(hist, out["user_id"].to_numpy(), ts, 4)
    cols = seqs.to_arrow()
    for name, arr in cols.items():
        assert arr.equals(out[name].combine_chunks()), name
    # scalar cutoff and a user without any history
    s = sequences_at(events, [10**9, out["user_id"][0].as_py()], T0 + 10**12, 3)
    assert s.lengths.tolist()[0] == 0 and s.lengths.tolist()[1] == 3


def test_output_feeds_build_batch(data, tmp_path):
    root, _, _ = data
    build_training_table(root, tmp_path, _cfg(max_len=6))
    t = read_table(tmp_path, "training")
    b = build_batch(t, BatchSpec(max_len=6))
    assert b.batch_size == t.num_rows
    assert int(b.seq_lengths.sum()) == sum(len(x) for x in t["seq_item_id"].to_pylist())


def test_extra_attributes_and_summary(data, tmp_path):
    root, _, items = data
    cfg = _cfg(max_len=3, item_attributes="[category,price_bucket]",
               sequence_fields="[item_id,category,action,domain,time_gap,price_bucket]")
    build_training_table(root, tmp_path, cfg)
    f = sorted((tmp_path / "training").glob("part-*.parquet"))[0]
    t = pq.read_table(f)
    price = dict(zip(items["item_id"].to_pylist(), items["price_bucket"].to_pylist()))
    for r in t.to_pylist():
        assert r["item_price_bucket"] == price[r["item_id"]]
        assert r["seq_price_bucket"] == [price[i] for i in r["seq_item_id"]]
    assert (tmp_path / "training.json").exists()


def test_bad_inputs(tmp_path, data):
    root, events, items = data
    with pytest.raises(ConfigError, match="sequence_fields must include"):
        _cfg(sequence_fields="[item_id]")
    with pytest.raises(ConfigError, match="max_len"):
        _cfg(max_len=0)
    with pytest.raises(ConfigError, match="unknown field"):
        _cfg(bogus=1)
    with pytest.raises(ConfigError, match="history_actions"):
        _cfg(history_actions="[clack]")
    # items missing from the items table: error names them, or fill on request
    d = tmp_path / "missing"
    write_data(d, events, items.slice(0, 5))
    with pytest.raises(DataError, match="missing from the items table"):
        build_training_table(d, tmp_path / "o", _cfg())
    build_training_table(d, tmp_path / "o", _cfg(on_unknown_item="fill", unknown_item_value=-1))
    assert -1 in read_table(tmp_path / "o", "training")["item_category"].to_pylist()
    # an attribute the items table lacks
    with pytest.raises(DataError, match="missing attribute column 'color'"):
        build_training_table(root, tmp_path / "o2", _cfg(item_attributes="[category,color]"))
    # an events file with a wrong column type
    bad = tmp_path / "bad"
    write_data(bad, events, items)
    f = sorted((bad / "events").rglob("*.parquet"))[0]
    t = pq.read_table(f)
    pq.write_table(t.set_column(t.schema.get_field_index("user_id"), "user_id", t["user_id"].cast(pa.string())), f)
    with pytest.raises(DataError, match="user_id"):
        build_training_table(bad, tmp_path / "o3", _cfg())


def test_cli_features_build(data, tmp_path):
    from typer.testing import CliRunner

    from recsys.cli import app

    root, _, _ = data
    r = CliRunner().invoke(app, ["features", "build", "--data", str(root), "--out", str(tmp_path),
                                 "--set", "max_len=3", "--set", "progress=false"])
    assert r.exit_code == 0, r.output
    assert read_table(tmp_path, "training").num_rows > 0
    r = CliRunner().invoke(app, ["features", "build", "--data", str(root), "--out", str(tmp_path),
                                 "--set", "max_len=-1"])
    assert r.exit_code == 2 and "max_len" in r.output


def test_writer_failure_surfaces_and_leaves_no_table(data, tmp_path, monkeypatch):
    """A failing part-file write (disk full, ...) fails the build; no half-built training dir becomes visible."""
    import feature_store.offline as off

    root, _, _ = data
    calls = {"n": 0}
    real = off.pq.write_table

    def flaky(table, path, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("No space left on device")
        return real(table, path, **kw)

    monkeypatch.setattr(off.pq, "write_table", flaky)
    with pytest.raises(OSError, match="No space left"):
        build_training_table(root, tmp_path, _cfg(max_len=3, chunk_size=5))
    assert not (tmp_path / "training").exists()
