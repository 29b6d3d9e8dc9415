"""Model quality on simulator data: every ranker trained with the same budget, scored on a time-based holdout.

Claim (issue 4): on sequences up to 2000, AUC order LONGER, ADS, LMN above DIN above pooling; ADS per domain.
Same budget = same training table, steps, batch size, embedding dim, optimizer and seed for every model
(`recsys train --no-ray`, world size 1: identical code path to the Ray workers). The baseline in the same run is
the pooling model; the table reports each model's AUC delta against it.

Usage: .venv/bin/python benchmarks/bench_quality.py [--quick] [--steps N] [--max-len L] [--models a,b,...]
Writes benchmarks/results/bench_quality.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODELS = ["pooling", "din", "transformer", "longer", "lmn", "ads"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller data and budget (smoke run)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--max-len", type=int, default=None, help="history length the models see (table holds 2000)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--work", default=None, help="work dir (default: a temp dir)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="", help="suffix of the results file (bench_quality<tag>.json)")
    args = ap.parse_args()
    steps = args.steps or (60 if args.quick else 600)
    max_len = args.max_len or (128 if args.quick else 512)
    users, items, days = (800, 2000, 4) if args.quick else (3000, 6000, 10)

    import torch

    from feature_store.definitions import load_feature_config
    from feature_store.offline import build_training_table
    from pipelines.train_ranker import run_training
    from recsys.config import CONFIG_DIR, load_config
    from recsys.data.simulator import SimulatorConfig, simulate

    work = Path(args.work or tempfile.mkdtemp(prefix="bench_quality_"))
    data, feats = work / "data", work / "features"
    t0 = time.perf_counter()
    if not (data / "meta.json").exists():
        simulate(load_config(SimulatorConfig, CONFIG_DIR / "simulator.yaml", [f"users={users}", f"items={items}", f"days={days}", f"seed={args.seed}"]), data)
    if not (feats / "training.json").exists():
        build_training_table(data, feats, load_feature_config(None, ["max_len=2000", "progress=false"]))
    meta = json.loads((data / "meta.json").read_text())
    prep_s = time.perf_counter() - t0

    rows = []
    for name in args.models.split(","):
        run = work / "runs" / name
        if run.exists():
            import shutil

            shutil.rmtree(run)  # every run starts fresh: same budget for every model
        sets = [
            f"data.max_len={max_len}", f"data.batch_size={args.batch_size}", f"max_steps={steps}", "epochs=100",
            f"seed={args.seed}", f"checkpoint_every_steps={steps}", "log_every_steps=50",
        ]
        t = time.perf_counter()
        run_training(CONFIG_DIR / f"{name}.yaml", feats, run, workers=1, use_ray=False, resume=False, overrides=sets)
        train_s = time.perf_counter() - t
        final = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if '"eval"' in l][-1]
        rows.append({
            "model": name, "train_s": train_s, **{k: final["overall"][k] for k in ("auc", "gauc", "logloss")},
            "per_domain_auc": {d: v["auc"] for d, v in final["per_domain"].items()},
            "per_domain_gauc": {d: v["gauc"] for d, v in final["per_domain"].items()},
        })
    base = next((r["auc"] for r in rows if r["model"] == "pooling"), None)
    domains = sorted({d for r in rows for d in r["per_domain_auc"]})
    print(f"\nmachine: {platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}; data: {users} users, "
          f"{items} items, {days} days ({meta.get('counts', {}).get('impressions', '?')} impressions), model L={max_len}, "
          f"{steps} steps x {args.batch_size}, prep {prep_s:.0f}s")
    head = f"{'model':<12}{'AUC':>8}{'dAUC':>9}{'GAUC':>8}{'logloss':>9}" + "".join(f"{'AUC d' + d:>9}" for d in domains) + f"{'train s':>9}"
    print(head)
    for r in sorted(rows, key=lambda r: -r["auc"]):
        delta = f"{r['auc'] - base:+.4f}" if base is not None else "-"
        print(f"{r['model']:<12}{r['auc']:>8.4f}{delta:>9}{r['gauc']:>8.4f}{r['logloss']:>9.4f}"
              + "".join(f"{r['per_domain_auc'].get(d, float('nan')):>9.4f}" for d in domains) + f"{r['train_s']:>9.0f}")
    out = ROOT / "benchmarks" / "results" / f"bench_quality{args.tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "machine": {"arch": platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__, "load_avg_1m": os.getloadavg()[0]},
        "config": {"users": users, "items": items, "days": days, "max_len": max_len, "steps": steps, "batch_size": args.batch_size, "seed": args.seed},
        "baseline": "pooling", "results": rows,
    }, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
