"""Memory of the trainer's table reader (recsys/training/data.py::read_training), against its baseline in the same
run: reading every stored history event (the reader before histories were cut at read time) vs keeping the newest
`--max-len` events per history, which is all a model with that history length sees. Each read runs in a fresh
process so that its peak RSS is its own. Default data: the simulator through the feature store with 1000-event
histories stored; `--features DIR` reads an existing training table instead.

Usage: .venv/bin/python benchmarks/bench_reader.py [--features DIR] [--max-len 64]
       (writes benchmarks/results/bench_reader<tag>.json)
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
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
    ap.add_argument("--tag", default="", help="suffix of the results file")
    args = ap.parse_args()
    info = machine_info(["pyarrow"])
    print("machine:", format_machine(info))
    with tempfile.TemporaryDirectory(prefix="bench-reader-") as tmp:
        features = args.features or make_features(Path(tmp))
        base = read_in_fresh_process(features, "all")
        ours = read_in_fresh_process(features, str(args.max_len))
    res = {"machine": info, "features": str(features), "max_len": args.max_len, "all_events": base, "cut": ours,
           "peak_rss_ratio": base["peak_rss_gib"] / ours["peak_rss_gib"], "table_ratio": base["table_gib"] / ours["table_gib"]}
    print(f"\ntraining table: {base['rows']} rows; models' history length {args.max_len}")
    print("| measure | all stored events (baseline) | newest max_len | ratio |")
    print("|---|---|---|---|")
    print(f"| table GiB | {base['table_gib']:.2f} | {ours['table_gib']:.2f} | {res['table_ratio']:.1f}x |")
    print(f"| peak RSS GiB | {base['peak_rss_gib']:.2f} | {ours['peak_rss_gib']:.2f} | {res['peak_rss_ratio']:.1f}x |")
    print(f"| read s | {base['read_s']:.1f} | {ours['read_s']:.1f} | {base['read_s'] / ours['read_s']:.1f}x |")
    out = ROOT / f"benchmarks/results/bench_reader{args.tag}.json"
    out.write_text(json.dumps(res, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
