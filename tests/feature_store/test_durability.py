"""Embedded online store durability: SIGKILL while appending loses nothing acknowledged; torn tails; snapshots."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from feature_store.definitions import load_feature_config
from feature_store.online import StoreError
from feature_store.online_embedded import EmbeddedOnlineStore

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000_000
USERS = 50


def batch(i: int) -> dict:
    """Deterministic batch i: 20 events over a few users (the parent regenerates what the child acknowledged)."""
    rng = np.random.default_rng(i)
    n = 20
    return {"user_id": rng.integers(0, USERS, n), "ts": T0 + i * 1000 + np.arange(n),
            "item_id": rng.integers(0, 10**6, n), "action": rng.integers(1, 5, n).astype(np.int8),
            "domain": np.zeros(n, np.int32)}


def cfg(path, snapshot_bytes=4096, **kw):
    sets = [f"online.path={path}", "max_len=100000", "chunk_size=1000", f"online.snapshot_bytes={snapshot_bytes}"]
    return load_feature_config(None, sets + [f"{k}={v}" for k, v in kw.items()])


CHILD = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    from tests.feature_store.test_durability import batch, cfg
    from feature_store.online_embedded import EmbeddedOnlineStore
    s = EmbeddedOnlineStore(cfg({path!r}))
    i = 0
    while True:
        s.append(batch(i))
        print(f"ACK {{i}}", flush=True)
        i += 1
""")


def _stored(store: EmbeddedOnlineStore) -> set[tuple]:
    seqs = store.get_sequences(np.arange(USERS), T0 + 10**9)
    users = np.repeat(np.arange(USERS), seqs.lengths)
    return set(zip(users.tolist(), seqs.ts.tolist(), seqs.item_id.tolist(), seqs.action.tolist()))


def _expected(batches) -> set[tuple]:
    out = set()
    for i in batches:
        b = batch(i)
        out |= set(zip(b["user_id"].tolist(), b["ts"].tolist(), b["item_id"].tolist(), b["action"].tolist()))
    return out


@pytest.mark.parametrize("kill_after", [5, 60])
def test_sigkill_loses_nothing_acknowledged(tmp_path, kill_after):
    path = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, "-c", CHILD.format(root=str(ROOT), path=str(path))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    acked = []
    try:
        deadline = time.time() + 120
        while len(acked) < kill_after and time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            acked.append(int(line.split()[1]))
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        err = proc.stderr.read()
    assert len(acked) >= kill_after, f"child acknowledged only {len(acked)} batches: {err[-2000:]}"
    with EmbeddedOnlineStore(cfg(path)) as s:
        got = _stored(s)
        assert _expected(acked) <= got  # every acknowledged event is there
        # anything beyond that is at most the batches in flight when killed (applied whole or not at all)
        extra = got - _expected(acked)
        assert extra <= _expected(range(max(acked) + 1, max(acked) + 3))
        assert s.gen >= 1 or kill_after < 60  # the long run crossed at least one snapshot


def test_torn_tail_is_dropped_and_corruption_reported(tmp_path):
    path = tmp_path / "store"
    with EmbeddedOnlineStore(cfg(path, snapshot_bytes=10**9)) as s:
        s.append(batch(0))
        s.append(batch(1))
    wal = sorted(path.glob("wal-*.log"))[-1]
    good = wal.read_bytes()
    # a record header promising more bytes than were written: the process died mid-write
    wal.write_bytes(good + b"RSW1" + (500).to_bytes(4, "little") + b"\x00\x00\x00\x00" + b"partial")
    with EmbeddedOnlineStore(cfg(path, snapshot_bytes=10**9)) as s:
        assert s.torn_bytes_dropped == 19
        assert _stored(s) == _expected([0, 1])
        s.append(batch(2))  # the log continues cleanly after the cut
    with EmbeddedOnlineStore(cfg(path, snapshot_bytes=10**9)) as s:
        assert _stored(s) == _expected([0, 1, 2])
    # a flipped byte inside the first record, with valid records after it: corruption, not a torn tail
    data = bytearray(wal.read_bytes())
    data[40] ^= 0xFF
    wal.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"corrupt record at byte 0"):
        EmbeddedOnlineStore(cfg(path, snapshot_bytes=10**9))


def test_snapshots_compact_and_recover(tmp_path):
    path = tmp_path / "store"
    with EmbeddedOnlineStore(cfg(path, snapshot_bytes=2048, max_len=10)) as s:
        s.put_items({"item_id": [1, 2], "category": [5, 6]})
        for i in range(40):
            s.append(batch(i))
        s.append([{"user_id": 7, "ts": T0 + 10**8, "item_id": 2, "action": 1, "domain": 0}])
        before = s.get_sequences(np.arange(USERS), T0 + 10**9)
        assert s.gen > 3
    files = sorted(p.name for p in path.iterdir())
    assert len([f for f in files if f.startswith("wal-")]) == 1  # old logs and snapshots were deleted
    with EmbeddedOnlineStore(cfg(path, snapshot_bytes=2048, max_len=10)) as s:
        after = s.get_sequences(np.arange(USERS), T0 + 10**9)
        assert s.get_items([2])[0]["category"].tolist() == [6]
    for f in ("offsets", "item_id", "category", "action", "ts"):
        np.testing.assert_array_equal(getattr(before, f), getattr(after, f))
    assert before.lengths.max() == 10


def test_config_mismatch_is_reported(tmp_path):
    path = tmp_path / "store"
    with EmbeddedOnlineStore(cfg(path)) as s:
        s.append(batch(0))
    c = cfg(path, item_attributes="[category,price]")
    with pytest.raises(StoreError, match="item attributes"):
        EmbeddedOnlineStore(c)


def test_redis_with_appendfsync_always_survives_server_kill(tmp_path):
    """The Redis backend is as durable as its server: with appendonly + appendfsync always, SIGKILL of redis-server
    loses no acknowledged append."""
    import shutil as sh

    import redis

    from feature_store.online import open_online_store
    from tests.feature_store.conftest import _free_port

    exe = sh.which("redis-server") or "/usr/bin/redis-server"
    if not Path(exe).exists():
        pytest.skip("redis-server is not installed")
    port = _free_port()
    args = [exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path), "--save", "",
            "--appendonly", "yes", "--appendfsync", "always"]
    url = f"redis://127.0.0.1:{port}/0"

    def start():
        p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            try:
                redis.Redis.from_url(url).ping()
                return p
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        p.kill()
        raise RuntimeError("redis-server did not start")

    c = load_feature_config(None, ["online.backend=redis", f"online.redis_url={url}", "max_len=100000",
                                   "chunk_size=1000"])
    proc = start()
    try:
        with open_online_store(c) as s:
            for i in range(10):
                s.append(batch(i))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc = start()
        with open_online_store(c) as s:
            seqs = s.get_sequences(np.arange(USERS), T0 + 10**9)
            users = np.repeat(np.arange(USERS), seqs.lengths)
            got = set(zip(users.tolist(), seqs.ts.tolist(), seqs.item_id.tolist(), seqs.action.tolist()))
            assert got == _expected(range(10))
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=10)
