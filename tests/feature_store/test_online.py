"""One online-store test suite, run against both backends (embedded and a real redis-server)."""
from __future__ import annotations

import datetime as dt
import uuid

import numpy as np
import pyarrow as pa
import pytest

from feature_store.definitions import load_feature_config
from feature_store.history import ItemAttributes, history_from_table
from feature_store.online import StoreError, StoreInputError, open_online_store
from recsys.data.batch import BatchSpec, build_batch
from recsys.data.io import read_table
from tests.feature_store.fixtures import T0, make_events, write_data


@pytest.fixture(params=["embedded", "redis"])
def open_store(request, tmp_path):
    """open_store(**overrides) -> a fresh store of the parametrized backend (each test gets its own namespace)."""
    backend = request.param
    opened = []
    prefix = f"t{uuid.uuid4().hex[:12]}"
    url = request.getfixturevalue("redis_url") if backend == "redis" else None

    def make(**kw):
        sets = [f"online.backend={backend}", f"online.path={tmp_path / 'store'}", f"online.key_prefix={prefix}",
                "online.fsync=false"]
        if url:
            sets.append(f"online.redis_url={url}")
        sets += [f"{k.replace('__', '.')}={v}" for k, v in kw.items()]
        s = open_online_store(load_feature_config(None, sets))
        opened.append(s)
        return s

    make.backend = backend
    yield make
    for s in opened:
        s.close()


def ev(user, ts, item, action=1, domain=0):
    return {"user_id": user, "ts": ts, "item_id": item, "action": action, "domain": domain}


def test_append_and_get_point_in_time(open_store):
    s = open_store(max_len=10)
    s.put_items({"item_id": [1, 2, 3], "category": [11, 12, 13]})
    assert s.append([ev(1, T0 + 2000, 2), ev(1, T0, 1), ev(1, T0 + 5000, 3), ev(2, T0, 3, action=2, domain=4)]) == 4
    seqs = s.get_sequences([1, 2, 99], T0 + 5000)  # the event at exactly the request time is excluded
    assert seqs.lengths.tolist() == [2, 1, 0]
    r = seqs.row(0)
    assert r["item_id"].tolist() == [1, 2] and r["category"].tolist() == [11, 12]
    assert r["time_gap"].tolist() == pytest.approx([5.0, 3.0])
    assert seqs.row(1)["action"].tolist() == [2] and seqs.row(1)["domain"].tolist() == [4]
    # per-user request times
    seqs = s.get_sequences([1, 1], [T0 + 1, T0 + 10_000])
    assert seqs.lengths.tolist() == [1, 3]
    # unknown item ids read as unknown_item_value
    s.append([ev(3, T0, 777)])
    assert s.get_sequences([3], T0 + 1).category.tolist() == [0]
    attrs, found = s.get_items([1, 777])
    assert attrs["category"].tolist() == [11, 0] and found.tolist() == [True, False]
    s.put_items({"item_id": [1], "category": [21]})  # upsert: attributes are read at get time
    assert s.get_sequences([1], T0 + 1).category.tolist() == [21]


def test_bounded_out_of_order_duplicates(open_store):
    s = open_store(max_len=3)
    s.append([ev(1, T0 + i * 1000, i) for i in range(5)])
    assert s.get_sequences([1], T0 + 10**6).item_id.tolist() == [2, 3, 4]
    # an out-of-order event lands at its ts position; one older than the full window is dropped
    s.append([ev(1, T0 + 3500, 35), ev(1, T0 + 500, 5)])
    assert s.get_sequences([1], T0 + 10**6).item_id.tolist() == [3, 35, 4]
    # exact duplicates (within a batch and of stored events) are dropped; equal ts ordered by (item, action, domain)
    assert s.append([ev(1, T0 + 4000, 4), ev(1, T0 + 4000, 4)]) == 0
    assert s.append([ev(1, T0 + 9000, 9, 2), ev(1, T0 + 9000, 8, 3), ev(1, T0 + 9000, 8, 3), ev(1, T0 + 9000, 8, 1)]) == 3
    seq = s.get_sequences([1], T0 + 10**6)
    assert seq.item_id.tolist() == [8, 8, 9] and seq.action.tolist() == [1, 3, 2]
    # impressions are accepted and ignored (not history)
    assert s.append([ev(1, T0 + 20_000, 1, action=0)]) == 0
    assert s.get_sequences([1], T0 + 10**6).item_id.tolist() == [8, 8, 9]


def test_input_forms_and_build_batch(open_store):
    s = open_store(max_len=4)
    t = pa.table({"ts": pa.array([T0, T0 + 1], pa.timestamp("ms", tz="UTC")), "user_id": pa.array([5, 5], pa.int64()),
                  "item_id": pa.array([1, 2], pa.int64()), "domain": pa.array([0, 1], pa.int32()),
                  "action": pa.array([1, 4], pa.int8()), "label": pa.array([None, None], pa.int8())})
    assert s.append(t) == 2
    aware = dt.datetime.fromtimestamp((T0 + 2) / 1000, tz=dt.timezone.utc)
    assert s.append({"ts": [aware], "user_id": [5], "item_id": [3], "action": [1], "domain": [0]}) == 1
    seqs = s.get_sequences(np.array([5, 6]), T0 + 100)
    cols = seqs.to_arrow()
    rows = pa.table({"user_id": [5, 6], "item_id": [1, 2], "item_category": [0, 0], "domain": [0, 0], "label": [1, 0],
                     "ts": pa.array([T0 + 100] * 2, pa.int64()), **cols})
    b = build_batch(rows, BatchSpec(max_len=4))
    assert b.seq_lengths.tolist() == [3, 0]


@pytest.mark.parametrize("bad, match", [
    ([{"user_id": 1, "ts": T0, "item_id": 1, "action": 1, "domain": 0, "colour": "red"}], r"unknown field\(s\) \['colour'\]"),
    ([{"user_id": "abc", "ts": T0, "item_id": 1, "action": 1, "domain": 0}], r"events\[1\]: field 'user_id' = 'abc'"),
    ([{"user_id": 1, "ts": 1.5, "item_id": 1, "action": 1, "domain": 0}], r"field 'ts' = 1.5"),
    ([{"user_id": 1, "ts": T0, "item_id": True, "action": 1, "domain": 0}], r"field 'item_id' = True"),
    ([{"user_id": 1, "ts": None, "item_id": 1, "action": 1, "domain": 0}], r"field 'ts' is null"),
    ([{"user_id": 1, "ts": T0, "item_id": 1, "domain": 0}], r"events\[1\]: field 'action' is null"),
    ({"user_id": [1], "ts": [T0], "item_id": [1], "domain": [0]}, r"missing required field\(s\) \['action'\]"),
    ([{"user_id": 1, "ts": T0, "item_id": 1, "action": 9, "domain": 0}], r"'action' = 9 is not a known action"),
    ([{"user_id": 1, "ts": -5, "item_id": 1, "action": 1, "domain": 0}], r"'ts' is negative"),
    ([{"user_id": 1, "ts": T0, "item_id": 1, "action": 1, "domain": 2**40}], r"'domain' = .* does not fit int32"),
    ([{"user_id": 1, "ts": dt.datetime(2024, 1, 1), "item_id": 1, "action": 1, "domain": 0}], r"naive datetime"),
    ({"user_id": np.array([1.0]), "ts": [T0], "item_id": [1], "action": [1], "domain": [0]}, r"'user_id' has dtype float64"),
    ("not events", r"expected a pyarrow Table"),
])
def test_bad_events_rejected_without_effect(open_store, bad, match):
    s = open_store()
    good = ev(1, T0 + 1, 1)
    rows = ([good] + bad) if isinstance(bad, list) else bad
    with pytest.raises(StoreInputError, match=match):
        s.append(rows)
    assert s.get_sequences([1], T0 + 10**6).lengths.tolist() == [0]  # the good row of the batch was not stored


def test_bad_items_rejected(open_store):
    s = open_store()
    with pytest.raises(StoreInputError, match=r"unknown field\(s\) \['colour'\]"):
        s.put_items({"item_id": [1], "category": [1], "colour": [2]})
    with pytest.raises(StoreInputError, match=r"missing field\(s\) \['category'\]"):
        s.put_items({"item_id": [1]})
    with pytest.raises(StoreInputError, match=r"'category' = 'x'"):
        s.put_items([{"item_id": 1, "category": "x"}])
    assert s.get_items([1])[1].tolist() == [False]


@pytest.mark.parametrize("L, cut", [(1000, None), (4, None), (3, 0.5)])
def test_consistency_with_offline(open_store, tmp_path, L, cut):
    """Append a log's events in order (in batches): every user's online sequence == the offline one at the cutoff."""
    events, items = make_events(seed=3, n_users=15, n_hist=900, n_imp=20)
    write_data(tmp_path / "data", events, items)
    log = read_table(tmp_path / "data", "events")  # the log, in file order
    ts = log["ts"].cast(pa.int64()).to_numpy()
    cutoff = int(ts.max()) + 1 if cut is None else int(np.quantile(ts, cut))
    s = open_store(max_len=L)
    s.put_items(items.select(["item_id", "category"]))
    arrived = log.filter(pa.array(ts < cutoff)) if cut is not None else log
    for i in range(0, arrived.num_rows, 97):
        s.append(arrived.slice(i, 97))
    users = np.unique(log["user_id"].to_numpy())
    online = s.get_sequences(users, cutoff)
    hist = history_from_table(log, [1, 2, 3, 4], ItemAttributes(items["item_id"].to_numpy(),
                                                                {"category": items["category"].to_numpy()}))
    offline = hist.sequences(users, np.full(len(users), cutoff), L)
    assert online.lengths.sum() > 0
    for f in ("offsets", "item_id", "category", "action", "domain", "ts", "time_gap"):
        np.testing.assert_array_equal(getattr(online, f), getattr(offline, f), err_msg=f)


def test_backend_specific_errors(open_store, tmp_path):
    s = open_store()
    if open_store.backend == "embedded":
        with pytest.raises(StoreError, match="open in another process"):
            open_store()
    else:
        cfg = load_feature_config(None, ["online.backend=redis", "online.redis_url=redis://127.0.0.1:1/0"])
        with pytest.raises(StoreError, match="not reachable"):
            open_online_store(cfg)
    s.close()


def test_bad_requests(open_store):
    s = open_store()
    with pytest.raises(StoreInputError, match="request_ts must be integer ms"):
        s.get_sequences([1], 1.5)
    with pytest.raises(StoreInputError, match="'user_id' has dtype"):
        s.get_sequences(["a"], T0)
    with pytest.raises(ValueError):
        s.get_sequences([1, 2], [T0, T0, T0])  # request times must match the users


def test_long_sequences(open_store):
    """L above the Lua unpack limit (~8000) still works (attribute lookups are batched)."""
    n = 9000
    s = open_store(max_len=n, chunk_size=1000)
    s.put_items({"item_id": np.arange(n), "category": np.arange(n) + 7})
    s.append({"user_id": np.ones(n, np.int64), "ts": T0 + np.arange(n), "item_id": np.arange(n),
              "action": np.ones(n, np.int8), "domain": np.zeros(n, np.int32)})
    seq = s.get_sequences([1], T0 + n)
    assert seq.lengths.tolist() == [n] and (seq.category == np.arange(n) + 7).all()
