"""The importer on clean and malformed logs: ids, timestamps, rejects with reasons, errors naming the column."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from recsys.cli import app
from recsys.data.importer import import_log
from recsys.data.io import DataError, read_table
from recsys.data.schemas import Action

MAP = "user_id=uid,item_id=iid,ts=time"
T0 = 1_704_103_200  # 2024-01-01T10:00:00Z in seconds


def _write(path, text: str | bytes):
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def _rejects(out) -> list[dict]:
    return pq.read_table(out / "rejects.parquet").to_pylist()


def test_string_ids_iso_times_vocab_sort_and_dedupe(tmp_path):
    src = _write(
        tmp_path / "log.csv",
        "uid,iid,time,act,dom\n"
        "bob,apple,2024-01-01T11:00:00Z,like,mall\n"
        "alice,pear,2024-01-01T10:00:00+00:00,click,feed\n"
        "alice,pear,2024-01-01T10:00:00+00:00,click,feed\n"  # exact duplicate
        " carol ,apple,2024-01-01 09:30:00.250,purchase,feed\n",  # naive ISO = UTC, blanks stripped
    )
    r = import_log(src, "csv", MAP + ",action=act,domain=dom", tmp_path / "out")
    assert (r.valid_rows, r.rejected_rows, r.duplicates_dropped) == (3, 0, 1)
    assert r.ts_format == "iso8601" and r.users == 3 and r.items == 2
    ev = read_table(tmp_path / "out", "events")
    ts = ev.column("ts").cast("int64").to_pylist()
    assert ts == sorted(ts) and ts[0] == T0 * 1000 - 1800_000 + 250
    users = pq.read_table(tmp_path / "out" / "vocab" / "user_id.parquet")
    raw_user = dict(zip(users.column("id").to_pylist(), users.column("raw").to_pylist()))
    assert [raw_user[u] for u in ev.column("user_id").to_pylist()] == ["carol", "alice", "bob"]
    assert ev.column("action").to_pylist() == [Action.PURCHASE, Action.CLICK, Action.LIKE]
    doms = pq.read_table(tmp_path / "out" / "vocab" / "domain.parquet").column("raw").to_pylist()
    assert [doms[d] for d in ev.column("domain").to_pylist()] == ["feed", "feed", "mall"]
    items = read_table(tmp_path / "out", "items")
    assert items.num_rows == 2 and read_table(tmp_path / "out", "users").num_rows == 3


@pytest.mark.parametrize("scale,name", [(1, "epoch_s"), (1000, "epoch_ms")])
def test_epoch_seconds_and_ms_detected(tmp_path, scale, name):
    src = _write(tmp_path / "log.tsv", "uid\tiid\ttime\n" + "".join(f"{u}\t{i}\t{(T0 + 60 * u) * scale}\n" for u, i in [(1, 5), (2, 6), (3, 5)]))
    r = import_log(src, "tsv", MAP, tmp_path / "out")
    assert r.ts_format == name and r.valid_rows == 3
    ts = read_table(tmp_path / "out", "events").column("ts").cast("int64").to_pylist()
    assert ts == [(T0 + 60 * u) * 1000 for u in (1, 2, 3)]
    # int ids are re-encoded densely, raw values kept in the vocabulary
    vocab = pq.read_table(tmp_path / "out" / "vocab" / "item_id.parquet").column("raw").to_pylist()
    assert vocab == ["5", "6"]


def test_malformed_rows_go_to_rejects_with_reasons(tmp_path):
    src = _write(
        tmp_path / "log.csv",
        b"uid,iid,time\n"
        b"a,x,1704103200\n"
        b"b,,1704103201\n"  # missing item id
        b"c,y,yesterday\n"  # bad timestamp
        b"d,z\n"  # wrong number of fields
        b"\xff\xfe,x,1704103202\n"  # not UTF-8
        b"e,y,1704103203\n",
    )
    r = import_log(src, "csv", MAP, tmp_path / "out")
    assert r.valid_rows == 2 and r.rejected_rows == 4
    rej = {row["row"]: row["reason"] for row in _rejects(tmp_path / "out")}
    assert rej[3] == "missing item_id"
    assert rej[4] == "bad timestamp 'yesterday'"
    assert rej[5].startswith("malformed row: expected 3 fields, got 2")
    assert rej[6] == "user_id: not valid UTF-8"
    assert r.reasons == {"missing item_id": 1, "bad timestamp": 1, "malformed row": 1, "user_id: not valid UTF-8": 1}
    raw = [row["raw"] for row in _rejects(tmp_path / "out") if row["row"] == 6][0]
    assert "\\xff" in raw


def test_missing_mapped_column_names_it(tmp_path):
    src = _write(tmp_path / "log.csv", "uid,iid,when\na,b,1\n")
    with pytest.raises(DataError, match=r"missing column 'time' \(mapped to ts\)"):
        import_log(src, "csv", MAP, tmp_path / "out")
    p = tmp_path / "log.parquet"
    pq.write_table(pa.table({"uid": [1], "iid": [2]}), p)
    with pytest.raises(DataError, match=rf"{p}: missing column 'time'"):
        import_log(p, "parquet", MAP, tmp_path / "out2")


def test_bad_mapping_and_format(tmp_path):
    src = _write(tmp_path / "log.csv", "uid,iid,time\na,b,1\n")
    with pytest.raises(DataError, match="must name a column for ts"):
        import_log(src, "csv", "user_id=uid,item_id=iid", tmp_path / "o")
    with pytest.raises(DataError, match="unknown field 'colour'"):
        import_log(src, "csv", MAP + ",colour=c", tmp_path / "o")
    with pytest.raises(DataError, match="--format"):
        import_log(src, "json", MAP, tmp_path / "o")


def test_empty_files_are_errors(tmp_path):
    empty = _write(tmp_path / "empty.csv", b"")
    with pytest.raises(DataError, match="empty file"):
        import_log(empty, "csv", MAP, tmp_path / "o")
    header = _write(tmp_path / "header.csv", "uid,iid,time\n")
    with pytest.raises(DataError, match="empty file"):
        import_log(header, "csv", MAP, tmp_path / "o")


def test_parquet_with_labels_and_timestamp_type(tmp_path):
    p = tmp_path / "log.parquet"
    ts = pa.array([T0 * 1000, T0 * 1000 + 5, T0 * 1000 + 9], pa.timestamp("ms"))
    pq.write_table(pa.table({"u": [10, 20, None], "i": ["a", "b", "c"], "t": ts, "clicked": [1, 0, 1]}), p)
    r = import_log(p, "parquet", "user_id=u,item_id=i,ts=t,label=clicked", tmp_path / "out")
    assert r.valid_rows == 2 and r.rejected_rows == 1 and r.ts_format == "timestamp"
    assert _rejects(tmp_path / "out")[0]["reason"] == "missing user_id"
    ev = read_table(tmp_path / "out", "events")
    assert ev.column("action").to_pylist() == [Action.IMPRESSION] * 2  # a labelled log is an impression log
    assert ev.column("label").to_pylist() == [1, 0]
    assert pq.read_table(tmp_path / "out" / "vocab" / "user_id.parquet").column("raw").to_pylist() == [10, 20]


def test_directory_source_and_cli_exit_codes(tmp_path):
    d = tmp_path / "logs"
    d.mkdir()
    _write(d / "a.csv", f"uid,iid,time\nu1,i1,{T0}\n")
    _write(d / "b.csv", f"uid,iid,time\nu2,i1,{T0 + 1}\n")
    runner = CliRunner()
    ok = runner.invoke(app, ["data", "import", "--source", str(d), "--format", "csv", "--map", MAP, "--out", str(tmp_path / "o1")])
    assert ok.exit_code == 0, ok.output
    assert read_table(tmp_path / "o1", "events").num_rows == 2
    bad = _write(tmp_path / "bad.csv", "uid,iid,time\nu1,i1,never\nu2,,1\n")
    res = runner.invoke(app, ["data", "import", "--source", str(bad), "--format", "csv", "--map", MAP, "--out", str(tmp_path / "o2")])
    assert res.exit_code != 0
    assert "no valid rows" in res.output and "2 rejected" in res.output
    assert len(_rejects(tmp_path / "o2")) == 2
    missing = runner.invoke(app, ["data", "import", "--source", str(bad), "--format", "csv", "--map", "user_id=uid,item_id=nope,ts=time", "--out", str(tmp_path / "o3")])
    assert missing.exit_code == 2 and "missing column 'nope'" in missing.output


def test_large_clean_log_takes_the_vectorised_path(tmp_path):
    n = 20_000
    rng = np.random.default_rng(0)
    users = rng.integers(0, 500, n)
    p = tmp_path / "big.parquet"
    pq.write_table(pa.table({"u": [f"user{u}" for u in users], "i": rng.integers(0, 1000, n), "t": T0 + rng.integers(0, 86400 * 3, n)}), p)
    r = import_log(p, "parquet", "user_id=u,item_id=i,ts=t", tmp_path / "out")
    assert r.rejected_rows == 0 and r.valid_rows + r.duplicates_dropped == n and r.ts_format == "epoch_s"
    ev = read_table(tmp_path / "out", "events")
    ts, user = ev.column("ts").cast("int64").to_numpy(), ev.column("user_id").to_numpy()
    assert ((np.diff(ts) > 0) | ((np.diff(ts) == 0) & (np.diff(user) >= 0))).all(), "sorted by (ts, user_id)"
    assert len({p.parent.name for p in (tmp_path / "out" / "events").rglob("*.parquet")}) >= 3
    # the vocabularies map the dense ids back to exactly the source rows (minus exact duplicates)
    uv = pq.read_table(tmp_path / "out" / "vocab" / "user_id.parquet").column("raw").to_pylist()
    iv = pq.read_table(tmp_path / "out" / "vocab" / "item_id.parquet").column("raw").to_pylist()
    got = sorted(zip((uv[u] for u in user), (iv[i] for i in ev.column("item_id").to_numpy()), (ts // 1000).tolist()))
    src = pq.read_table(p)
    want = sorted(set(zip(src.column("u").to_pylist(), src.column("i").to_pylist(), src.column("t").to_pylist())))
    assert got == want


def test_reimport_replaces_previous_output(tmp_path):
    a = _write(tmp_path / "a.csv", f"uid,iid,time\nu1,i1,{T0}\nu2,i2,{T0 + 86400 * 3}\n")
    b = _write(tmp_path / "b.csv", f"uid,iid,time\nu1,i1,{T0}\n")
    import_log(a, "csv", MAP, tmp_path / "out")
    import_log(b, "csv", MAP, tmp_path / "out")
    assert read_table(tmp_path / "out", "events").num_rows == 1


def test_many_bad_values_and_well_shaped_but_invalid_ones(tmp_path):
    rows = ["uid,iid,time,act"]
    for k in range(2000):
        t = "2024-01-02T03:04:05Z" if k % 2 else ("garbage" if k % 4 else "2024-13-01")  # month 13: right shape
        rows.append(f"u{k % 7},i{k % 11},{t},{['click', 'like', 'share', 'purchase', 'impression'][k % 5]}")
    src = _write(tmp_path / "log.csv", "\n".join(rows) + "\n")
    r = import_log(src, "csv", MAP + ",action=act", tmp_path / "out")
    assert r.rejected_rows == 1000 and r.reasons == {"bad timestamp": 1000}
    reasons = {row["reason"] for row in _rejects(tmp_path / "out")}
    assert reasons == {"bad timestamp 'garbage'", "bad timestamp '2024-13-01'"}
    ev = read_table(tmp_path / "out", "events")
    assert set(ev.column("action").to_pylist()) == {0, 1, 2, 3, 4}
