"""Claim: the simulator writes >= 1M events in under a minute on 2 cores (fully vectorised numpy).

Measures, in one run:
1. End to end: `simulate()` at a size that yields >= 1M events (users=3500, items=20000, days=7, 3 domains), incl.
   writing parquet; events/s against the target 1M/60 s = 16,667 events/s (the ratio is printed).
2. The hot kernel, same work both ways: one slot of organic browsing (draw a pool by exposure, score the pool by
   domain-transformed affinity, Gumbel-max pick) vectorised over all events vs a naive per-event Python loop.
3. The importer on CSVs written from the simulated events (string user ids; epoch-ms times and numeric codes, or
   ISO-8601 times and action/domain names) vs a naive
   baseline doing the same work row by row (csv module, per-row validation, dict id encoding, list sort, dedupe,
   then the same parquet writer).

Usage: .venv/bin/python benchmarks/bench_simulator.py [--quick]   (writes benchmarks/results/simulator.json)
--quick: users=1000, days=3 (about 130k events) for a smoke run; the claim needs the full size.
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from machine import format_machine, machine_info  # noqa: E402
from recsys.config import load_config  # noqa: E402
from recsys.data import simulator as sim  # noqa: E402
from recsys.data.importer import import_log  # noqa: E402
from recsys.data.io import read_table, write_table  # noqa: E402
from recsys.data.schemas import TS  # noqa: E402

TARGET_EVENTS_PER_S = 1_000_000 / 60


def naive_browse(cfg, rng, w, exp, s, users: np.ndarray, domains: np.ndarray) -> np.ndarray:
    """Per-event Python loop doing the same work as simulator._browse for the given events."""
    out = np.empty(users.size, np.int64)
    for e in range(users.size):
        u, k = users[e], domains[e]
        pool = np.minimum(np.searchsorted(exp.cum[k], rng.random(cfg.browse_pool), side="right"), exp.n - 1)
        q = s[u] * w.domain_w[k]
        aff = w.item_f32[pool] @ q.astype(np.float32)
        g = aff * (cfg.affinity_scale / cfg.browse_temperature) - np.log(-np.log(rng.random(cfg.browse_pool)))
        out[e] = pool[int(np.argmax(g))]
    return out


def bench_kernel(cfg) -> dict:
    rng = np.random.Generator(np.random.PCG64(1))
    w = sim._World(cfg, rng)
    exp = sim._Exposure(cfg, w, w.start_ms)
    s = w.interest(cfg)
    t = time.perf_counter()
    got = [sim._browse(cfg, rng, w, exp, s, 1.0) for _ in range(cfg.slots_per_day)]  # a day, slot by slot as simulate does
    vec_s = time.perf_counter() - t
    bu, bdom = np.concatenate([g[0] for g in got]), np.concatenate([g[1] for g in got])
    n_naive = min(bu.size, 20_000)
    t = time.perf_counter()
    naive_browse(cfg, rng, w, exp, s, bu[:n_naive], bdom[:n_naive])
    naive_s = time.perf_counter() - t
    vec_rate, naive_rate = bu.size / vec_s, n_naive / naive_s
    return {"events_vectorised": int(bu.size), "vectorised_events_per_s": vec_rate, "events_naive": int(n_naive),
            "naive_events_per_s": naive_rate, "speedup": vec_rate / naive_rate}


ACTION_NAMES = ["impression", "click", "like", "share", "purchase"]
DOMAIN_NAMES = ["feed", "mall", "live", "search", "ads", "video", "news", "games"]


def naive_import(src: Path, out: Path, named: bool) -> int:
    """The same work as import_log, row by row in Python: parse, validate ts, encode ids, sort, dedupe, write."""
    actions = {a: k for k, a in enumerate(ACTION_NAMES)}
    domains: dict[str, int] = {}
    good, rejects = [], []
    with open(src, newline="", encoding="utf-8", errors="surrogateescape") as f:
        r = csv.reader(f)
        next(r)
        for line, rec in enumerate(r, start=2):
            try:
                user, item, ts, dom, act = (x.strip() for x in rec)
                if not user or not item:
                    raise ValueError("missing id")
                if named:
                    t = dt.datetime.fromisoformat(ts)
                    t = t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)
                    ms = int(t.timestamp() * 1000)
                    good.append((ms, user, item, dom, actions[act]))
                else:
                    good.append((int(ts), user, item, int(dom), int(act)))
            except (ValueError, KeyError) as e:
                rejects.append((line, str(e)))
    good.sort()
    rows, prev = [], None
    for row in good:
        if row != prev:
            rows.append(row)
        prev = row
    cols = list(zip(*rows))
    uv = {x: k for k, x in enumerate(sorted(set(cols[1])))}
    iv = {x: k for k, x in enumerate(sorted(set(cols[2])))}
    dom = [domains.setdefault(x, len(domains)) for x in cols[3]] if named else cols[3]
    write_table(pa.table({"ts": pa.array(cols[0], pa.int64()).cast(TS), "user_id": pa.array([uv[x] for x in cols[1]], pa.int64()),
                          "item_id": pa.array([iv[x] for x in cols[2]], pa.int64()), "domain": pa.array(dom, pa.int32()),
                          "action": pa.array(cols[4], pa.int8())}), out, "events")
    return len(rows)


def bench_import(data_dir: Path, work: Path, max_rows: int, named: bool) -> dict:
    """named=False: epoch-ms times and numeric codes; named=True: ISO-8601 times, action and domain names."""
    ev = read_table(data_dir, "events", columns=["ts", "user_id", "item_id", "domain", "action"]).slice(0, max_rows)
    n = ev.num_rows
    src = work / "log.csv"
    user = pc.binary_join_element_wise("u", ev["user_id"].cast(pa.string()), "")
    if named:
        cols = {"user": user, "item": ev["item_id"], "time": pc.strftime(ev["ts"], format="%Y-%m-%dT%H:%M:%S"),
                "dom": pa.array(DOMAIN_NAMES, pa.string()).take(ev["domain"].combine_chunks()),
                "act": pa.array(ACTION_NAMES, pa.string()).take(ev["action"].combine_chunks())}
    else:
        cols = {"user": user, "item": ev["item_id"], "time": ev["ts"].cast(pa.int64()), "dom": ev["domain"], "act": ev["action"]}
    pcsv.write_csv(pa.table(cols), src)
    mapping = "user_id=user,item_id=item,ts=time,domain=dom,action=act"
    warm = work / "warm.csv"  # pay the lazy imports (pyarrow compute kernels, parquet writer) outside the timing
    warm.write_text("user,item,time,dom,act\nu1,1,1704067200000,0,1\n")
    import_log(warm, "csv", mapping, work / "warm")
    t = time.perf_counter()
    rep = import_log(src, "csv", mapping, work / "imported")
    imp_s = time.perf_counter() - t
    assert rep.valid_rows + rep.duplicates_dropped == n and rep.rejected_rows == 0, rep
    t = time.perf_counter()
    naive_rows = naive_import(src, work / "naive", named)
    naive_s = time.perf_counter() - t
    assert naive_rows == rep.valid_rows, (naive_rows, rep.valid_rows)
    return {"rows": n, "format": rep.ts_format, "importer_s": imp_s, "importer_rows_per_s": n / imp_s, "naive_s": naive_s,
            "naive_rows_per_s": n / naive_s, "speedup": naive_s / imp_s}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    size = ["users=1000", "items=8000", "days=3"] if args.quick else ["users=3500", "items=20000", "days=7"]
    cfg = load_config(sim.SimulatorConfig, None, size + ["domains=3", "seed=0"])
    machine = machine_info(["numpy", "pyarrow"])
    print("machine:", format_machine(machine))
    print("config:", " ".join(size), "domains=3 candidates=50 slate_size=4 (other knobs: configs/simulator.yaml)")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        load_before = os.getloadavg()[0]
        t, cpu0 = time.perf_counter(), time.process_time()
        summary = sim.simulate(cfg, work / "data")
        wall, cpu = time.perf_counter() - t, time.process_time() - cpu0
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        c = summary["counts"]
        e2e = {"events": c["events"], "seconds": wall, "events_per_s": c["events"] / wall,
               "target_events_per_s": TARGET_EVENTS_PER_S, "ratio_vs_target": c["events"] / wall / TARGET_EVENTS_PER_S,
               "seconds_per_1M_events": wall / c["events"] * 1e6, "peak_rss_mb": rss_mb,
               "cpu_seconds": cpu, "events_per_cpu_s": c["events"] / cpu, "load_avg_1m_before": load_before,
               "max_user_sequence": c["max_user_sequence"], "users_with_2000_plus": c["users_with_2000_plus"],
               "impression_ctr": c["impression_ctr"]}
        kernel = bench_kernel(cfg)
        imp = bench_import(work / "data", work, 500_000 if not args.quick else 100_000, named=False)
        imp_named = bench_import(work / "data", work, 500_000 if not args.quick else 100_000, named=True)
    rows = [
        ("simulate end to end", f"{e2e['events']:,} events in {wall:.1f} s (cpu {cpu:.1f} s)", f"{e2e['events_per_s']:,.0f} ev/s",
         f"target {TARGET_EVENTS_PER_S:,.0f} ev/s", f"{e2e['ratio_vs_target']:.1f}x"),
        ("browse kernel", f"{kernel['events_vectorised']:,} events", f"{kernel['vectorised_events_per_s']:,.0f} ev/s",
         f"per-event loop {kernel['naive_events_per_s']:,.0f} ev/s", f"{kernel['speedup']:.0f}x"),
        ("import CSV, epoch ms", f"{imp['rows']:,} rows in {imp['importer_s']:.2f} s", f"{imp['importer_rows_per_s']:,.0f} rows/s",
         f"per-row Python {imp['naive_rows_per_s']:,.0f} rows/s", f"{imp['speedup']:.1f}x"),
        ("import CSV, ISO + names", f"{imp_named['rows']:,} rows in {imp_named['importer_s']:.2f} s",
         f"{imp_named['importer_rows_per_s']:,.0f} rows/s", f"per-row Python {imp_named['naive_rows_per_s']:,.0f} rows/s",
         f"{imp_named['speedup']:.1f}x"),
    ]
    w = [max(len(r[i]) for r in rows) for i in range(5)]
    head = ("what", "size", "ours", "baseline", "ratio")
    w = [max(a, len(b)) for a, b in zip(w, head)]
    print(" | ".join(h.ljust(x) for h, x in zip(head, w)))
    print("-+-".join("-" * x for x in w))
    for r in rows:
        print(" | ".join(v.ljust(x) for v, x in zip(r, w)))
    print(f"load average before the run: {load_before:.1f} on {os.cpu_count()} cores (a shared machine: wall times are inflated)")
    print(f"peak RSS {rss_mb:,.0f} MB; max user sequence {e2e['max_user_sequence']:,}; "
          f"users with >= 2000 events {e2e['users_with_2000_plus']}; impression CTR {e2e['impression_ctr']:.3f}")
    print(f"claim (>= 1M events in < 60 s): {'MET' if e2e['events'] >= 1e6 and wall < 60 else 'NOT MET' if not args.quick else 'n/a (--quick)'}")
    out = Path(__file__).resolve().parent / "results" / "simulator.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"quick": args.quick, "machine": machine, "config": size, "end_to_end": e2e,
                               "browse_kernel": kernel, "import": imp, "import_iso_names": imp_named}, indent=2))
    print("wrote", out)


if __name__ == "__main__":
    main()
