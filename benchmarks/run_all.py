"""`make bench`: run every benchmark script in turn (each prints its table and writes benchmarks/results/*.json).

Pass --quick to run each at its reduced size. A failing benchmark is reported and the others still run.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    extra = sys.argv[1:]
    scripts = sorted(HERE.glob("bench_*.py")) + sorted(p for p in HERE.glob("*.py") if p.name == "lmn_memory.py")
    failed = []
    for s in scripts:
        print(f"\n===== {s.name} {' '.join(extra)}", flush=True)
        t = time.perf_counter()
        rc = subprocess.call([sys.executable, str(s), *extra])
        print(f"===== {s.name}: exit {rc} in {time.perf_counter() - t:.0f}s", flush=True)
        if rc:
            failed.append(s.name)
    if failed:
        print("failed:", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
