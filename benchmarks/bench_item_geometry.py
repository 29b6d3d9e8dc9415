"""Claim checked: what trained rankers' item embeddings know about the simulator's true item geometry, and how much
candidate-aware signal an attention over that learned geometry can find.

Target attention can only weigh history events by their relevance to the candidate as well as its item embeddings
place related items near each other. For each trained run (bench_quality's run dirs), the latest checkpoint is exported
and its item table (item + category embeddings, concatenated, per item id) probed against the truth
(recsys/data/item_geometry.py): R^2 of the true factor, of the within-category part of the factor (beyond a one-hot
category), and of log popularity; chance = width / items. Then, on bench_long_range's rows (impressions with
>= --min-history earlier engaged events), the R^2 of the true click logit that a softmax attention (tau = --tau) over
the newest --window events adds to the recency-weighted means + category shares (the pooling baseline's information,
model-free), taken over each geometry: the true factors, the category centroids (an item known only by its
category), each model's table (rows scaled to unit norm), and with --features the co-engagement vectors the trainer's
`item_init: {method: co_engagement}` starts from (recsys/training/item_init.py; default knobs, width --dim, computed
from the training split of FEATURES with --validation-fraction).

Usage: .venv/bin/python benchmarks/bench_item_geometry.py --data WORK/data --runs WORK/runs/pooling WORK/runs/din ...
       [--features WORK/features --validation-fraction 0.2] [--tag _X]   (writes benchmarks/results/bench_item_geometry<tag>.json)
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine import format_machine, machine_info  # noqa: E402
from recsys.data.history_signal import category_centroids, history_signal, item_categories  # noqa: E402
from recsys.data.item_geometry import model_item_table, probe_item_table  # noqa: E402
from recsys.training.config import DataConfig  # noqa: E402
from recsys.training.data import find_table_files, read_training, time_split  # noqa: E402
from recsys.training.export import export_run, load_exported  # noqa: E402
from recsys.training.item_init import ItemInitConfig, co_engagement_table  # noqa: E402


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="simulator output the runs were trained on")
    ap.add_argument("--runs", nargs="*", default=[], help="training run dirs (a complete checkpoint each)")
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--tau", type=float, default=2.0)
    ap.add_argument("--min-history", type=int, default=456)
    ap.add_argument("--features", default=None, help="training table dir: add the co-engagement init vectors")
    ap.add_argument("--validation-fraction", type=float, default=0.2, help="the runs' time split (bench_quality's)")
    ap.add_argument("--dim", type=int, default=32, help="width of the co-engagement vectors (the models' item dim)")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    machine = machine_info(["torch", "torchrec"])
    F = np.load(Path(args.data) / "truth" / "item_factors.npy").astype(np.float64)
    tables = {"true factors": F, "category centroids": category_centroids(args.data)}
    cats = item_categories(args.data, F.shape[0])
    if args.features:
        train = time_split(read_training(find_table_files(args.features)),
                           DataConfig(validation_fraction=args.validation_fraction)).train
        vec, _ = co_engagement_table(train, F.shape[0], args.dim, ItemInitConfig(method="co_engagement"))
        tables["co-engagement init"] = vec.double().numpy()
    with tempfile.TemporaryDirectory(prefix="bench_item_geometry_") as tmp:
        for run in map(Path, args.runs):
            export_run(run, Path(tmp) / run.name)
            tables[run.name] = model_item_table(load_exported(Path(tmp) / run.name).model, cats)
    h = history_signal(args.data, recent=args.window)
    mh, W = args.min_history, args.window
    n_rows = int((h.history >= mh).sum())
    base = [*h.recency_means(W), *h.category_shares(W)]
    r2_base = h.r2(*base, min_history=mh)
    rows = []
    for name, table in tables.items():
        p = probe_item_table(table, args.data)
        attn = h.with_geometry(unit_rows(table)).attention(W, args.tau)
        rows.append({"table": name, "width": int(table.shape[1]), **dataclasses.asdict(p),
                     "attention_adds_over_share": h.r2(*base, attn, min_history=mh) - r2_base})
    out = ROOT / "benchmarks" / "results" / f"bench_item_geometry{args.tag}.json"
    out.write_text(json.dumps({"machine": machine, "config": {**vars(args), "rows": n_rows,
                                                              "r2_means_and_share": r2_base}, "results": rows}, indent=1))
    print(f"machine: {format_machine(machine)}\ndata: {args.data}; rows: {n_rows} impressions with "
          f">= {mh} earlier engaged events; R^2 recency means + category shares {r2_base:.4f}")
    print(f"{'item table':<22}{'width':>6}{'factor R2':>11}{'within-cat R2':>15}{'chance':>8}{'log-pop R2':>12}"
          f"{'attention adds':>16}")
    for r in rows:
        print(f"{r['table']:<22}{r['width']:>6}{r['factor_r2']:>11.3f}{r['within_category_r2']:>15.3f}{r['chance']:>8.3f}"
              f"{r['popularity_r2']:>12.3f}{r['attention_adds_over_share']:>+16.4f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
