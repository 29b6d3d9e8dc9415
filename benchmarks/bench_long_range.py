"""Claim checked: whether a simulator setting holds click signal further back than the newest L events, i.e. whether a
long-sequence model has anything to gain over a short window on that data (bench_quality's expected order rests on it).

For each setting: simulate (bench_quality's size: 6000 users, 6000 items, 10 days), then for every logged impression
with >= --min-history engaged events before it, regress the true click logit on <mean true factor of the newest L
events, shown item> (the baseline, same rows) and on that plus the same score of everything older
(recsys/data/history_signal.py). "older adds" = R^2 gain; ratio = R^2(with older) / R^2(newest L only).

Second table, whether *which* events matter depends on the candidate (what target attention can use and a pooled
history cannot): on the same rows, R^2 of the best recency-weighted mean of the newest --attention-window events (window
means of 2, 4, ..., that many events, least-squares weights: the baseline) vs with a candidate-aware softmax-attention
score of those events added (tau = --attention-tau). Then the same on top of the category shares of those events (the
shipped rankers' `embedding.category_share` cross features, model-free): what attention adds beyond the hand-made
target attention the pooling baseline already has, over the true item factors and over the category centroids only
(what a model whose item embeddings know categories and nothing finer could find; bench_item_geometry.py measures
what trained rankers' embeddings know).

Usage: .venv/bin/python benchmarks/bench_long_range.py [--quick]   (writes benchmarks/results/bench_long_range.json)
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine import format_machine, machine_info  # noqa: E402
from recsys.config import CONFIG_DIR, load_config  # noqa: E402
from recsys.data.history_signal import category_centroids, history_signal  # noqa: E402
from recsys.data.simulator import SimulatorConfig, simulate  # noqa: E402

SETTINGS = {
    "default": [],
    "returning topics (4)": ["personal_topics=4"],
    "returning topics (12, always)": ["personal_topics=12", "topic_return_prob=1.0"],
    "slow drift": ["drift_rate=0.03"],
    "slow drift, long weight 0.5": ["drift_rate=0.03", "long_weight=0.5"],
    "concurrent topics (4)": ["personal_topics=4", "concurrent_topics=true"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1500 users, 5 days (smoke run)")
    ap.add_argument("--windows", default="8,64,256", help="newest-L windows to compare")
    ap.add_argument("--min-history", type=int, default=456, help="rows need this many earlier engaged events")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--attention-window", type=int, default=64)
    ap.add_argument("--attention-tau", type=float, default=2.0)
    args = ap.parse_args()
    base = ["users=1500", "items=3000", "days=5"] if args.quick else ["users=6000", "items=6000", "days=10"]
    base.append(f"seed={args.seed}")
    windows = [int(w) for w in args.windows.split(",")]
    rows, attention_rows = [], []
    mh, A = args.min_history, args.attention_window
    for name, extra in SETTINGS.items():
        with tempfile.TemporaryDirectory(prefix="bench_long_range_") as d:
            t = time.perf_counter()
            simulate(load_config(SimulatorConfig, CONFIG_DIR / "simulator.yaml", base + extra), d)
            h = history_signal(d, recent=A, attention_tau=args.attention_tau)  # the data read once per setting
            for L in windows:
                g = dataclasses.replace(h, recent=L)
                only = g.r2(g.recent_score, min_history=args.min_history)
                both = g.r2(g.recent_score, g.older_score, min_history=args.min_history)
                rows.append({"setting": name, "overrides": extra, "window": L, "rows": int((h.history >= args.min_history).sum()),
                             "r2_window": only, "r2_with_older": both, "older_adds": both - only,
                             "ratio": both / only if only > 0 else float("nan"), "seconds": time.perf_counter() - t})
            means, shares = h.recency_means(A), h.category_shares(A)
            cent = category_centroids(d)  # unit rows, on the true factors' scale for the same tau
            centroid = h.with_geometry(cent / np.linalg.norm(cent, axis=1, keepdims=True)).attention(A, args.attention_tau)
            r2 = {"means": h.r2(*means, min_history=mh), "attn": h.r2(*means, h.attention_score, min_history=mh),
                  "shares": h.r2(*means, *shares, min_history=mh),
                  "shares_attn": h.r2(*means, *shares, h.attention_score, min_history=mh),
                  "shares_centroid": h.r2(*means, *shares, centroid, min_history=mh)}
            attention_rows.append({"setting": name, "overrides": extra, "window": A, "tau": args.attention_tau,
                                   "r2_recency_means": r2["means"], "r2_with_attention": r2["attn"],
                                   "attention_adds": r2["attn"] - r2["means"], "r2_with_category_share": r2["shares"],
                                   "attention_adds_over_share": r2["shares_attn"] - r2["shares"],
                                   "centroid_attention_adds_over_share": r2["shares_centroid"] - r2["shares"]})
    machine = machine_info([])
    out = ROOT / "benchmarks" / "results" / "bench_long_range.json"
    out.write_text(json.dumps({"machine": machine, "config": {"simulator": base, "min_history": args.min_history,
                                                              "windows": windows, "attention_window": A,
                                                              "attention_tau": args.attention_tau},
                               "results": rows, "attention": attention_rows}, indent=1))
    print(f"machine: {format_machine(machine)}\nsimulator: {' '.join(base)}; rows: impressions with >= "
          f"{args.min_history} earlier engaged events")
    print(f"{'setting':<32}{'L':>5}{'rows':>8}{'R2 newest L':>13}{'R2 + older':>12}{'older adds':>12}{'ratio':>8}")
    for r in rows:
        print(f"{r['setting']:<32}{r['window']:>5}{r['rows']:>8}{r['r2_window']:>13.4f}{r['r2_with_older']:>12.4f}"
              f"{r['older_adds']:>+12.4f}{r['ratio']:>8.3f}")
    print(f"\ncandidate-aware signal in the newest {A} events (tau {args.attention_tau}), same rows; attention over the "
          "true item factors, or over the category centroids only")
    print(f"{'setting':<32}{'R2 recency means':>18}{'+ attention':>13}{'adds':>9}{'+ cat share':>13}{'attn adds':>11}"
          f"{'centroid attn adds':>20}")
    for r in attention_rows:
        print(f"{r['setting']:<32}{r['r2_recency_means']:>18.4f}{r['r2_with_attention']:>13.4f}{r['attention_adds']:>+9.4f}"
              f"{r['r2_with_category_share']:>13.4f}{r['attention_adds_over_share']:>+11.4f}"
              f"{r['centroid_attention_adds_over_share']:>+20.4f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
