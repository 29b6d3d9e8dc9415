"""Claim: point-in-time sequence features (L=1000) at >= 1.6M impressions/min with RSS bounded by the chunk size,
faster than a polars join_asof version in the same run; online batch-get latency for 100 users on both backends.

Measures, in one run:
1. Offline build (feature_store.offline.build_training_table, incl. reading parquet and writing lz4 parquet) at two
   data sizes with the same chunk size, and the large size again with chunk/4, chunk*4 and 4 user shards: impressions/min and peak
   RSS (each build runs in a fresh subprocess; peak = its own ru_maxrss). Baseline in the same run: polars
   join_asof (backward, by user, on ts - 1 ms = strictly before) + int_ranges/explode/gather per chunk, lists built
   with pyarrow, written with polars' parquet writer (lz4). Both outputs are checked equal on the first impressions.
2. Online: get_sequences for 100 random users (request time = now) on the embedded store and on a real redis-server
   (started here on a free loopback port, stopped by PID), p50/p99 over repeated requests.
Data is shaped like PERF-NOTES.md: per-user history counts lognormal (median 45, p99 ~4.5k, max 20k), impressions
drawn in proportion to activity, 30 days. Full size = 100k users / ~30M events / 2M impressions (--full).

Usage: .venv/bin/python benchmarks/bench_features.py [--quick | --full] [--scales 0.02,0.08] [--chunk 2500] [--tag x]
Writes benchmarks/results/features.json (features_<tag>.json with --tag). Prints wall-clock throughput and, because
the 2-core machines are shared, CPU time too (impressions per CPU-minute): compare ratios within one run.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from machine import format_machine, machine_info  # noqa: E402
from recsys.data.io import ts_from_ms, write_table  # noqa: E402

T0 = 1_700_000_000_000
DAY = 86_400_000


def generate(root: Path, scale: float, seed: int = 0, days: int = 30) -> dict:
    """Events + items shaped like PERF-NOTES at `scale` x (100k users, 2M impressions)."""
    rng = np.random.default_rng(seed)
    n_users = int(100_000 * scale)
    n_items = max(1000, int(1_000_000 * scale))
    counts = np.minimum(np.rint(np.exp(rng.normal(np.log(45), 1.98, n_users))), 20_000).astype(np.int64) + 1
    n_hist = int(counts.sum())
    n_imp = int(2_000_000 * scale)
    users = np.repeat(np.arange(n_users, dtype=np.int64), counts)
    imp_users = rng.choice(n_users, n_imp, p=counts / counts.sum())
    span = days * DAY
    parts = 4
    for p in range(parts):  # write in parts to bound the generator's own memory
        hs, he = p * n_hist // parts, (p + 1) * n_hist // parts
        is_, ie = p * n_imp // parts, (p + 1) * n_imp // parts
        nh, ni = he - hs, ie - is_
        t = pa.table({
            "ts": ts_from_ms(np.concatenate([T0 + rng.integers(0, span, nh), T0 + rng.integers(0, span, ni)])),
            "user_id": np.concatenate([users[hs:he], imp_users[is_:ie]]),
            "item_id": rng.integers(0, n_items, nh + ni),
            "domain": rng.integers(0, 3, nh + ni).astype(np.int32),
            "action": np.concatenate([rng.choice([1, 2, 3, 4], nh, p=[.7, .15, .1, .05]), np.zeros(ni)]).astype(np.int8),
            "request_id": pa.array(np.concatenate([np.zeros(nh), np.arange(is_, ie)]).astype(np.int64),
                                   mask=np.concatenate([np.ones(nh, bool), np.zeros(ni, bool)])),
            "position": pa.array(np.concatenate([np.zeros(nh), rng.integers(0, 10, ni)]).astype(np.int32),
                                 mask=np.concatenate([np.ones(nh, bool), np.zeros(ni, bool)])),
            "label": pa.array(np.concatenate([np.zeros(nh), rng.random(ni) < 0.05]).astype(np.int8),
                              mask=np.concatenate([np.ones(nh, bool), np.zeros(ni, bool)])),
            "propensity": pa.array(np.concatenate([np.zeros(nh), rng.random(ni)]).astype(np.float32),
                                   mask=np.concatenate([np.ones(nh, bool), np.zeros(ni, bool)])),
        })
        write_table(t, root, "events", part=f"part-{p}")
        del t
    write_table(pa.table({"item_id": np.arange(n_items, dtype=np.int64), "domain": np.zeros(n_items, np.int32),
                          "category": rng.integers(0, 1000, n_items), "created_ts": ts_from_ms(np.full(n_items, T0))}),
                root, "items")
    q = np.percentile(counts, [50, 99])
    return {"scale": scale, "users": n_users, "items": n_items, "history_events": n_hist, "impressions": n_imp,
            "events_per_user_p50": float(q[0]), "events_per_user_p99": float(q[1]), "events_per_user_max": int(counts.max())}


# ---------------------------------------------------------------- workers (run in fresh subprocesses) ----------
def worker_ours(data: str, out: str, chunk: int, L: int, shards: int = 1) -> dict:
    from feature_store.definitions import load_feature_config
    from feature_store.offline import build_training_table

    cfg = load_feature_config(None, [f"chunk_size={chunk}", f"max_len={L}", "progress=false", f"user_shards={shards}"])
    s = build_training_table(data, out, cfg)
    return {"seconds": s["seconds"], "load_seconds": s["load_seconds"], "impressions": s["impressions"],
            "mean_seq_len": s["mean_seq_len"], "full_fraction": s["full_fraction"]}


def worker_polars(data: str, out: str, chunk: int, L: int, shards: int = 1) -> dict:
    import warnings

    import polars as pl

    # join_asof with `by` cannot verify sortedness; both sides are sorted on the key right before the join
    warnings.filterwarnings("ignore", message="Sortedness of columns cannot be checked")

    t0 = time.perf_counter()
    files = sorted(str(p) for p in Path(data, "events").rglob("*.parquet"))
    ev = pl.scan_parquet(files)
    items = pl.read_parquet(sorted(str(p) for p in Path(data, "items").rglob("*.parquet")),
                            columns=["item_id", "category"])
    ts_int = pl.col("ts").dt.epoch("ms")
    hist = (ev.filter(pl.col("action").is_in([1, 2, 3, 4]))
            .select("user_id", ts_int.alias("t"), "item_id", "action", "domain")
            .join(items.lazy(), on="item_id", how="left")
            .sort(["user_id", "t", "item_id", "action", "domain"], maintain_order=True)
            .unique(subset=["user_id", "t", "item_id", "action", "domain"], keep="first", maintain_order=True)
            .with_row_index("row", offset=0)
            .collect())
    first = hist.group_by("user_id").agg(pl.col("row").min().alias("first"))
    imp = (ev.filter(pl.col("action") == 0)
           .select("request_id", "ts", "user_id", "item_id", "domain", "position", "label", "policy", "propensity")
           .with_columns(ts_int.alias("t"))
           .join(items.lazy(), on="item_id", how="left").rename({"category": "item_category"})
           .sort(["t", "user_id"], maintain_order=True)
           .collect())
    # an event at t_e matches impressions with t > t_e; sorted once (join_asof needs the key sorted)
    right = hist.select("user_id", (pl.col("t") + 1).alias("t_next"), "row").sort("t_next", maintain_order=True)
    outdir = Path(out, "training")
    outdir.mkdir(parents=True, exist_ok=True)
    total = 0
    for c in range(0, imp.height, chunk):
        part = imp.slice(c, chunk).with_row_index("i")
        ends = (part.join_asof(right, left_on="t", right_on="t_next", by="user_id",
                                         strategy="backward")
                .join(first, on="user_id", how="left").sort("i"))
        end = (ends["row"].fill_null(-1) + 1).to_numpy()
        fst = ends["first"].fill_null(0).to_numpy()
        start = np.maximum(fst, end - L)
        lens = np.where(ends["row"].is_null().to_numpy(), 0, end - start)
        idx = (pl.DataFrame({"s": start, "e": start + lens}).select(pl.int_ranges("s", "e").alias("idx"))
               .explode("idx")["idx"].drop_nulls())
        g = hist.select(pl.col("item_id", "category", "action", "domain", "t").gather(idx))
        offsets = pa.array(np.concatenate([[0], np.cumsum(lens)]).astype(np.int32))
        gap = ((pl.Series(np.repeat(part["t"].to_numpy(), lens)) - g["t"]).cast(pl.Float32) * 0.001)
        lists = {f"seq_{n}": pl.from_arrow(pa.ListArray.from_arrays(offsets, v.to_arrow()))
                 for n, v in (("item_id", g["item_id"]), ("category", g["category"]), ("action", g["action"]),
                              ("domain", g["domain"]), ("time_gap", gap))}
        res = part.drop("i", "t").with_columns(**lists)
        res.write_parquet(outdir / f"part-{c // chunk:05d}.parquet", compression="lz4")
        total += res.height
    return {"seconds": time.perf_counter() - t0, "impressions": total}


def run_worker(kind: str, data: Path, out: Path, chunk: int, L: int, shards: int = 1) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--data", str(data), "--out", str(out), "--chunk", str(chunk),
           "--L", str(L), "--shards", str(shards)]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if p.returncode:
        raise RuntimeError(f"{kind} worker failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def same_output(a: Path, b: Path, n: int = 2000) -> bool:
    import pyarrow.parquet as pq

    ta = pq.read_table(sorted((a / "training").glob("part-*.parquet"))[0]).slice(0, n)
    tb = pq.read_table(sorted((b / "training").glob("part-*.parquet"))[0]).slice(0, n)
    cols = ["request_id", "user_id", "item_id", "item_category", "seq_item_id", "seq_category", "seq_action",
            "seq_domain"]
    ok = all(ta[c].to_pylist() == tb[c].to_pylist() for c in cols)
    ga, gb = ta["seq_time_gap"].combine_chunks().values.to_numpy(), tb["seq_time_gap"].combine_chunks().values.to_numpy()
    return ok and np.allclose(ga, gb, rtol=1e-6)


# ---------------------------------------------------------------- online ---------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_online(tmp: Path, n_users: int, L: int, reps: int) -> list[dict]:
    import redis

    from feature_store.definitions import load_feature_config
    from feature_store.online import open_online_store

    rng = np.random.default_rng(1)
    counts = np.minimum(np.rint(np.exp(rng.normal(np.log(45), 1.98, n_users))), 20_000).astype(np.int64) + 1
    users = np.repeat(np.arange(n_users), counts)
    n = len(users)
    events = {"user_id": users, "ts": T0 + rng.integers(0, 30 * DAY, n), "item_id": rng.integers(0, 100_000, n),
              "action": np.ones(n, np.int8), "domain": np.zeros(n, np.int32)}
    port = _free_port()
    rdir = tmp / "redis"
    rdir.mkdir()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(rdir),
                             "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = []
    try:
        url = f"redis://127.0.0.1:{port}/0"
        for _ in range(100):
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        for backend in ("embedded", "redis"):
            cfg = load_feature_config(None, [f"max_len={L}", f"online.backend={backend}", f"online.redis_url={url}",
                                             f"online.path={tmp / 'store'}", "online.snapshot_bytes=1073741824"])
            with open_online_store(cfg) as s:
                s.put_items({"item_id": np.arange(100_000), "category": rng.integers(0, 1000, 100_000)})
                t = time.perf_counter()
                step = 50_000
                for i in range(0, n, step):
                    s.append({k: v[i:i + step] for k, v in events.items()})
                append_s = time.perf_counter() - t
                lat = []
                got = 0
                qrng = np.random.default_rng(2)  # the same requests on both backends
                for _ in range(reps + 5):
                    q = qrng.choice(n_users, 100, replace=False)
                    t = time.perf_counter()
                    seqs = s.get_sequences(q, T0 + 31 * DAY)
                    lat.append(time.perf_counter() - t)
                    got += int(seqs.lengths.sum())
                lat = lat[5:]  # warm-up requests dropped
            lat_ms = np.array(lat) * 1000
            rows.append({"backend": backend, "users_in_store": n_users, "events_appended": n,
                         "append_events_per_s": n / append_s, "batch_users": 100,
                         "mean_events_returned": got / (reps + 5), "p50_ms": float(np.percentile(lat_ms, 50)),
                         "p99_ms": float(np.percentile(lat_ms, 99)), "requests": reps})
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return rows


# ---------------------------------------------------------------- main -----------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="scales 0.02 and 0.08 (default)")
    ap.add_argument("--full", action="store_true", help="scales 0.5 and 1.0 (PERF-NOTES size; ~10+ minutes here)")
    ap.add_argument("--scales", default=None)
    ap.add_argument("--chunk", type=int, default=None)
    ap.add_argument("--L", type=int, default=1000)
    ap.add_argument("--online-users", type=int, default=5000)
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--skip-polars", action="store_true")
    ap.add_argument("--tag", default="", help="results file suffix: features_<tag>.json")
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--worker", choices=["ours", "polars"])
    ap.add_argument("--data")
    ap.add_argument("--out")
    a = ap.parse_args()
    if a.worker:
        fn = worker_ours if a.worker == "ours" else worker_polars
        res = fn(a.data, a.out, a.chunk, a.L, a.shards)
        ru = resource.getrusage(resource.RUSAGE_SELF)
        res["peak_rss_mb"] = ru.ru_maxrss / 1024
        res["cpu_seconds"] = ru.ru_utime + ru.ru_stime  # all threads; a load-independent cost measure
        print(json.dumps(res))
        return
    scales = [float(x) for x in a.scales.split(",")] if a.scales else ([0.5, 1.0] if a.full else [0.02, 0.08])
    # quick: small chunks so that even the small size has many chunks (steady-state memory, not start-up)
    chunk = a.chunk or (10_000 if a.full else 2_500)
    meta = {"machine": machine_info(["numpy", "pyarrow", "polars"]), "L": a.L, "chunk": chunk, "scales": scales,
            "compression": "lz4", "writer_threads": 2}
    print("machine:", format_machine(meta["machine"]))
    print("config:", json.dumps({k: v for k, v in meta.items() if k != "machine"}))
    tmp = Path(tempfile.mkdtemp(prefix="bench_features_"))
    offline = []
    try:
        for sc in scales:
            d = tmp / f"data_{sc}"
            t = time.perf_counter()
            info = generate(d, sc)
            print(f"generated scale {sc}: {info} in {time.perf_counter() - t:.0f}s", flush=True)
            runs = [("ours", chunk, 1)] + ([("ours", chunk // 4, 1), ("ours", chunk * 4, 1), ("ours", chunk, 4)]
                                           if sc == scales[-1] else [])
            runs += [] if a.skip_polars else [("polars", chunk, 1)]
            for kind, ch, sh in runs:
                out = tmp / f"out_{kind}_{sc}_{ch}_{sh}"
                r = run_worker(kind, d, out, ch, a.L, sh)
                r.update(kind=kind, chunk=ch, shards=sh, **info)
                r["impressions_per_min"] = r["impressions"] / r["seconds"] * 60
                offline.append(r)
                print(f"  {kind:6s} chunk={ch:6d} shards={sh}: {r['impressions_per_min'] / 1e6:.2f}M imp/min, "
                      f"{r['seconds']:.1f}s, peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
                if kind == "ours" and (ch, sh) != (chunk, 1):
                    shutil.rmtree(out, ignore_errors=True)
            if not a.skip_polars:
                ok = same_output(tmp / f"out_ours_{sc}_{chunk}_1", tmp / f"out_polars_{sc}_{chunk}_1")
                print(f"  outputs equal on the first rows: {ok}")
                if not ok:
                    raise SystemExit("polars baseline and ours disagree: benchmark invalid")
            shutil.rmtree(d, ignore_errors=True)
            for p in tmp.glob(f"out_*_{sc}_*"):
                shutil.rmtree(p, ignore_errors=True)
        online = bench_online(tmp, a.online_users, a.L, a.reps)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print("\nOffline build (L=%d, lz4, 2 writer threads)" % a.L)
    print(f"{'impl':7s} {'scale':>6s} {'hist events':>12s} {'impressions':>11s} {'chunk':>6s} {'shards':>6s} "
          f"{'mean len':>8s} {'imp/min':>9s} {'imp/CPU-min':>11s} {'peak RSS MB':>11s} {'vs polars':>9s} {'CPU vs polars':>13s}")
    for r in offline:
        base = next((b for b in offline if b["kind"] == "polars" and b["scale"] == r["scale"]), None)
        ratio = f"{r['impressions_per_min'] / base['impressions_per_min']:.2f}x" if base else "-"
        r["imp_per_cpu_min"] = r["impressions"] / r["cpu_seconds"] * 60
        cratio = f"{base['cpu_seconds'] / r['cpu_seconds']:.2f}x" if base else "-"
        mean = f"{r['mean_seq_len']:.0f}" if "mean_seq_len" in r else "-"
        print(f"{r['kind']:7s} {r['scale']:6.2f} {r['history_events']:12d} {r['impressions']:11d} {r['chunk']:6d} "
              f"{r['shards']:6d} {mean:>8s} {r['impressions_per_min'] / 1e6:8.2f}M {r['imp_per_cpu_min'] / 1e6:10.2f}M "
              f"{r['peak_rss_mb']:11.0f} {ratio:>9s} {cratio:>13s}")
    print("\nOnline get_sequences, 100 users per request, L=%d" % a.L)
    print(f"{'backend':9s} {'users':>6s} {'events/req':>10s} {'p50 ms':>7s} {'p99 ms':>7s} {'append ev/s':>11s}")
    for r in online:
        print(f"{r['backend']:9s} {r['users_in_store']:6d} {r['mean_events_returned']:10.0f} {r['p50_ms']:7.2f} "
              f"{r['p99_ms']:7.2f} {r['append_events_per_s']:11.0f}")
    res_dir = ROOT / "benchmarks" / "results"
    res_dir.mkdir(parents=True, exist_ok=True)
    meta["loadavg_end"] = os.getloadavg()
    print("load average at end:", meta["loadavg_end"])
    name = f"features_{a.tag}.json" if a.tag else "features.json"
    (res_dir / name).write_text(json.dumps({"config": meta, "offline": offline, "online": online}, indent=2))
    print(f"\nwrote {res_dir / name}")


if __name__ == "__main__":
    main()
