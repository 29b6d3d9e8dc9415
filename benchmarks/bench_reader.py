"""Memory of the trainer's table reader (recsys/training/data.py), against its baselines in the same run.

1. Cut at read time: reading every stored history event (the reader before histories were cut at read time) vs
   keeping the newest `--max-len` events per history, which is all a model with that history length sees. Each read
   runs in a fresh process so that its peak RSS is its own.
2. One shared copy: `--workers` ranks on this machine each holding the training table as the trainer did before
   (read_training + time_split's stable sort: a private copy per rank) vs `shared_training_table` (rank 0 writes
   one memory-mapped Arrow file, every rank maps it). Measured while every rank holds the table with all its pages
   touched: the sum of the ranks' PSS (proportional set size: a page shared by N processes counts 1/N in each) and
   each rank's peak RSS.

Default data: the simulator through the feature store with 1000-event histories stored; `--features DIR` reads an
existing training table instead.

Usage: .venv/bin/python benchmarks/bench_reader.py [--features DIR] [--max-len 64] [--workers 2]
       (writes benchmarks/results/bench_reader<tag>.json)
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from machine import format_machine, machine_info  # noqa: E402

PROBE = """
import json, resource, sys, time
from recsys.training.data import find_table_files, read_training
t = time.perf_counter()
table = read_training(find_table_files(sys.argv[1]), None if sys.argv[2] == "all" else int(sys.argv[2]))
print(json.dumps({"rows": table.num_rows, "table_gib": table.nbytes / 2**30, "read_s": time.perf_counter() - t,
                  "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


RANK_PROBE = """
import json, pathlib, resource, sys, time
import numpy as np
import pyarrow as pa
from recsys.training.data import find_table_files, read_training, shared_training_table
features, max_len, mode, rank, sync = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), pathlib.Path(sys.argv[5])
from recsys.allocator import tune_malloc
tune_malloc()  # as the trainer's workers do before they read
files = find_table_files(features)
t = time.perf_counter()
if mode == "private":  # the trainer before: read, then time_split's unconditional stable sort (a contiguous copy)
    table = read_training(files, max_len)
    table = table.take(pa.array(np.argsort(table.column("ts").to_numpy(), kind="stable")))
else:
    def barrier():  # the trainer's dist.barrier, over the file system: rank 0 announces the written cache
        if rank == 0:
            (sync / "written").touch()
        while not (sync / "written").exists():
            time.sleep(0.05)
    table = shared_training_table(files, max_len, sync / "cache", rank == 0, barrier)
touched = sum(int(np.frombuffer(b, np.uint8)[::4096].sum()) for rb in table.to_batches() for col in rb.columns
              for b in col.buffers() if b is not None)  # fault in every page, as an epoch of batches does
ready_s = time.perf_counter() - t
(sync / f"ready-{rank}").touch()
while not (sync / "go").exists():
    time.sleep(0.05)
kb = {l.split()[0]: int(l.split()[1]) for l in open("/proc/self/smaps_rollup") if l.split()[0] in ("Rss:", "Pss:")}
print(json.dumps({"rank": rank, "rows": table.num_rows, "ready_s": ready_s, "pss_gib": kb["Pss:"] / 2**20,
                  "rss_gib": kb["Rss:"] / 2**20, "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def hold_in_ranks(features: Path, max_len: int, mode: str, workers: int) -> dict:
    """`workers` processes holding the table at once (mode private | shared); their PSS summed while all hold it."""
    with tempfile.TemporaryDirectory(prefix="bench-reader-ranks-") as sync:
        procs = [subprocess.Popen([sys.executable, "-c", RANK_PROBE, str(features), str(max_len), mode, str(r), sync],
                                  cwd=ROOT, stdout=subprocess.PIPE, text=True) for r in range(workers)]
        try:
            while len(list(Path(sync).glob("ready-*"))) < workers:
                if any(p.poll() not in (None, 0) for p in procs):
                    raise RuntimeError(f"a {mode} rank failed")
                time.sleep(0.1)
            (Path(sync) / "go").touch()
            ranks = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
    return {"ranks": ranks, "pss_sum_gib": sum(r["pss_gib"] for r in ranks),
            "peak_rss_max_gib": max(r["peak_rss_gib"] for r in ranks), "ready_s": max(r["ready_s"] for r in ranks)}


def make_features(work: Path) -> Path:
    from feature_store.definitions import load_feature_config
    from feature_store.offline import build_training_table
    from recsys.config import load_config
    from recsys.data.simulator import SimulatorConfig, simulate

    raw = work / "sim"
    simulate(load_config(SimulatorConfig, None, ["users=2000", "items=5000", "days=7", "seed=0"]), raw)
    build_training_table(raw, raw, load_feature_config(None, ["max_len=1000", "progress=false"]))
    return raw


def read_in_fresh_process(features: Path, max_len: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, str(features), max_len], cwd=ROOT, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--features", type=Path, help="training table / data dir (default: simulate one)")
    ap.add_argument("--max-len", type=int, default=64, help="history length the models see")
    ap.add_argument("--workers", type=int, default=2, help="ranks on this machine for the shared-copy comparison")
    ap.add_argument("--tag", default="", help="suffix of the results file")
    args = ap.parse_args()
    info = machine_info(["pyarrow"])
    print("machine:", format_machine(info))
    with tempfile.TemporaryDirectory(prefix="bench-reader-") as tmp:
        features = args.features or make_features(Path(tmp))
        base = read_in_fresh_process(features, "all")
        ours = read_in_fresh_process(features, str(args.max_len))
        private = hold_in_ranks(features, args.max_len, "private", args.workers)
        shared = hold_in_ranks(features, args.max_len, "shared", args.workers)
    res = {"machine": info, "features": str(features), "max_len": args.max_len, "all_events": base, "cut": ours,
           "peak_rss_ratio": base["peak_rss_gib"] / ours["peak_rss_gib"], "table_ratio": base["table_gib"] / ours["table_gib"],
           "workers": args.workers, "private_per_rank": private, "shared_mapped": shared,
           "pss_sum_ratio": private["pss_sum_gib"] / shared["pss_sum_gib"]}
    print(f"\ntraining table: {base['rows']} rows; models' history length {args.max_len}")
    print("| measure | all stored events (baseline) | newest max_len | ratio |")
    print("|---|---|---|---|")
    print(f"| table GiB | {base['table_gib']:.2f} | {ours['table_gib']:.2f} | {res['table_ratio']:.1f}x |")
    print(f"| peak RSS GiB | {base['peak_rss_gib']:.2f} | {ours['peak_rss_gib']:.2f} | {res['peak_rss_ratio']:.1f}x |")
    print(f"| read s | {base['read_s']:.1f} | {ours['read_s']:.1f} | {base['read_s'] / ours['read_s']:.1f}x |")
    print(f"\n{args.workers} ranks holding the table at once (history length {args.max_len})")
    print("| measure | private copy per rank (baseline) | one mapped copy | ratio |")
    print("|---|---|---|---|")
    print(f"| sum of the ranks' PSS GiB | {private['pss_sum_gib']:.2f} | {shared['pss_sum_gib']:.2f} | {res['pss_sum_ratio']:.1f}x |")
    print(f"| largest peak RSS of a rank GiB | {private['peak_rss_max_gib']:.2f} | {shared['peak_rss_max_gib']:.2f} | "
          f"{private['peak_rss_max_gib'] / shared['peak_rss_max_gib']:.1f}x |")
    print(f"| seconds until every rank holds it | {private['ready_s']:.1f} | {shared['ready_s']:.1f} | "
          f"{private['ready_s'] / shared['ready_s']:.1f}x |")
    out = ROOT / f"benchmarks/results/bench_reader{args.tag}.json"
    out.write_text(json.dumps(res, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
