"""Model quality on simulator data: every ranker trained with the same budget, scored on a time-based holdout.

Claim (issue 4): on sequences up to 2000, AUC order LONGER, ADS, LMN above DIN above pooling; ADS per domain.
Same budget = same training table, epochs (or steps), batch size, history length and seed for every model
(`recsys train --no-ray`, world size 1: the Ray workers' code path); each model keeps its own configs/<model>.yaml
architecture and learning rates. The baseline in the same run is the pooling model.
One pass by default: a second pass over the same impressions overfits the id tables of every model (L=64, 6000 users,
2 epochs: pooling's AUC 0.7655 after the first pass and 0.7539 after the second, DIN's 0.7660 -> 0.7511).

What the table reports, from each run's predictions.parquet (one logit per validation impression):
- AUC / GAUC / logloss on the observed clicks, and per-domain AUC;
- dAUC vs pooling with a 95% interval from a paired user-level Poisson bootstrap (all models resampled with the
  same user weights, so the interval is about the difference, not each AUC);
- truth AUC: the AUC against the simulator's true click probabilities instead of the sampled clicks (each row counts
  as a positive with weight p_true and a negative with weight 1 - p_true). It removes the Bernoulli label noise, so
  it separates models that the ~1k validation clicks cannot; the oracle (true CTR as the score) is the ceiling;
- a reference row: logistic regression on engineered features (recency-weighted category share + item clicks,
  benchmarks/feature_reference.py), the yardstick for "has the model learned the planted structure";
- with --train-seeds, a seed summary: the bootstrap interval only covers which users are evaluated, not how training
  went; retraining with another seed moves a model's truth AUC by ~0.0004 (sd) and its paired difference to pooling
  by ~0.0002 at L=2000 (results/bench_quality_seeds12.json), so differences below ~0.0005 need several seeds.

Usage: .venv/bin/python benchmarks/bench_quality.py [--quick] [--epochs E | --steps N] [--max-len L] [--models ...]
Writes benchmarks/results/bench_quality<tag>.json (rewritten after every model, so a long run keeps what it has).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODELS = ["pooling", "din", "ads", "longer", "lmn", "transformer"]
REFERENCE = "feature LR (reference)"


def weighted_auc(order: np.ndarray, pos_w: np.ndarray, neg_w: np.ndarray) -> float:
    """P(score of a positive > score of a negative) with per-row positive/negative weights; `order` sorts scores
    ascending. Self-pairs are excluded; exact ties are negligible for float logits and ignored."""
    p, n = pos_w[order], neg_w[order]
    below = np.cumsum(n) - n
    den = p.sum() * n.sum() - float((p * n).sum())
    return float((p * below).sum() / den) if den > 0 else float("nan")


def truth_table(data: Path):
    """(request_id, item_id) -> true click probability, from the simulator's ground truth (pandas frame)."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    def flat(table, col: str, name: str):
        parent = pc.list_parent_indices(table[col]).to_numpy()
        starts = np.r_[0, np.cumsum(pc.list_value_length(table[col]).to_numpy())[:-1]]
        return {"request_id": table["request_id"].to_numpy()[parent], "k": np.arange(len(parent)) - starts[parent],
                name: pc.list_flatten(table[col]).to_numpy()}

    import pandas as pd

    req = ds.dataset(data / "requests", format="parquet").to_table(columns=["request_id", "candidate_item_ids"])
    tru = ds.dataset(data / "truth" / "request_ctr", format="parquet").to_table()
    j = pd.DataFrame(flat(req, "candidate_item_ids", "item_id")).merge(pd.DataFrame(flat(tru, "true_ctr", "p_true")),
                                                                        on=["request_id", "k"])
    j["p_true"] = j["p_true"].astype(np.float64)
    return j.groupby(["request_id", "item_id"], as_index=False)["p_true"].max()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller data and budget (smoke run)")
    ap.add_argument("--epochs", type=int, default=None, help="training epochs per model (default 1: one pass, see the docstring)")
    ap.add_argument("--steps", type=int, default=None, help="cap on optimizer steps (default: the epochs decide)")
    ap.add_argument("--max-len", type=int, default=None, help="history length the models see (default 2000)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--users", type=int, default=None)
    ap.add_argument("--days", type=int, default=None)
    ap.add_argument("--validation-fraction", type=float, default=0.2)
    ap.add_argument("--bootstrap", type=int, default=500, help="paired bootstrap replicates for dAUC intervals")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--set", action="append", default=[], metavar="MODEL:key=value",
                    help="extra config override for one model, e.g. longer:model.merge_k=4 (repeatable); a model "
                    "name NAME@VARIANT trains configs/NAME.yaml under its own label, e.g. --models longer,longer@k4 "
                    "--set longer@k4:model.merge_k=4")
    ap.add_argument("--work", default=None, help="work dir (default: a temp dir); data is reused when present")
    ap.add_argument("--sim", action="append", default=[], metavar="key=value",
                    help="simulator override (SimulatorConfig field), e.g. --sim personal_topics=4 for the "
                         "returning-interests setting; the data is regenerated when these change")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="", help="suffix of the results file (bench_quality<tag>.json)")
    ap.add_argument("--no-reference", action="store_true", help="skip the feature logistic-regression reference row")
    ap.add_argument("--train-seeds", type=seed_list, default=None, metavar="S1,S2,...",
                    help="train every model once per seed (same data; the first seed keeps the plain label, the others "
                    "are NAME@seedS) and add a seed summary: mean and sd of truth AUC, and the per-seed paired "
                    "difference to pooling trained with the same seed")
    args = ap.parse_args()
    epochs = args.epochs or 1
    max_len = args.max_len or (128 if args.quick else 2000)
    users = args.users or (800 if args.quick else 6000)
    days = args.days or (4 if args.quick else 10)
    items = 2000 if args.quick else 6000

    import pyarrow.parquet as pq

    from feature_reference import feature_lr_logits
    from feature_store.definitions import load_feature_config
    from feature_store.offline import build_training_table
    from machine import format_machine, machine_info
    from pipelines.train_ranker import run_training
    from recsys.config import CONFIG_DIR, load_config
    from recsys.data.simulator import SimulatorConfig, simulate

    work = Path(args.work or tempfile.mkdtemp(prefix="bench_quality_"))
    data, feats = work / "data", work / "features"
    t0 = time.perf_counter()
    sim = [f"users={users}", f"items={items}", f"days={days}", f"seed={args.seed}"] + args.sim
    if not (data / "meta.json").exists() or json.loads((data / "meta.json").read_text()).get("bench_args") != sim:
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(feats, ignore_errors=True)
        simulate(load_config(SimulatorConfig, CONFIG_DIR / "simulator.yaml", sim), data)
        meta = json.loads((data / "meta.json").read_text())
        (data / "meta.json").write_text(json.dumps({**meta, "bench_args": sim}))
    if not (feats / "training.json").exists():
        build_training_table(data, feats, load_feature_config(None, [f"max_len={max(max_len, 2000)}", "progress=false"]))
    meta = json.loads((data / "meta.json").read_text())
    truth = truth_table(data)
    prep_s = time.perf_counter() - t0

    extra: dict[str, list[str]] = {}
    for s in args.set:
        name, _, kv = s.partition(":")
        extra.setdefault(name, []).append(kv)
    names = args.models.split(",")
    if args.train_seeds:
        names, extra = seeded_runs(names, args.train_seeds, extra)
    config = {"users": users, "items": items, "days": days, "simulator_overrides": args.sim, "max_len": max_len,
              "epochs": epochs, "steps": args.steps,
              "batch_size": args.batch_size, "validation_fraction": args.validation_fraction, "seed": args.seed,
              "train_seeds": args.train_seeds, "overrides": extra}
    machine = machine_info(["torch"])
    out = ROOT / "benchmarks" / "results" / f"bench_quality{args.tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)

    runs: dict[str, dict] = {}
    preds: dict[str, "np.ndarray"] = {}
    frame = None
    refs: dict[str, "np.ndarray"] = {}
    for name in names:
        run = work / "runs" / name
        shutil.rmtree(run, ignore_errors=True)  # every run starts fresh: same budget for every model
        sets = [
            f"data.max_len={max_len}", f"data.batch_size={args.batch_size}", f"epochs={epochs}",
            f"data.validation_fraction={args.validation_fraction}", f"seed={args.seed}", "log_every_steps=100",
            "checkpoint_every_steps=1000000",
        ] + ([f"max_steps={args.steps}"] if args.steps else []) + extra.get(name, [])
        t = time.perf_counter()
        run_training(CONFIG_DIR / f"{name.split('@')[0]}.yaml", feats, run, workers=1, use_ray=False, resume=False, overrides=sets)
        train_s = time.perf_counter() - t
        recs = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
        final = [r for r in recs if r["kind"] == "eval"][-1]
        steps = max(r["step"] for r in recs if r["kind"] == "train")
        p = pq.read_table(run / "predictions.parquet").to_pandas()
        if frame is None:
            frame = p.drop(columns="logit").merge(truth, on=["request_id", "item_id"], how="left")
            if frame["p_true"].isna().any():
                raise SystemExit("predictions do not match the simulator truth (different data?)")
            if not args.no_reference:
                ref = frame[["request_id", "item_id"]].merge(
                    feature_lr_logits(feats, args.validation_fraction, max_len, seed=args.seed), how="left")
                refs[REFERENCE] = ref["logit"].to_numpy(np.float64)
        preds[name] = p["logit"].to_numpy(np.float64)
        runs[name] = {"model": name, "train_s": train_s, "steps": steps,
                      **{k: final["overall"][k] for k in ("auc", "gauc", "logloss")},
                      "per_domain_auc": {d: v["auc"] for d, v in final["per_domain"].items()},
                      "per_domain_gauc": {d: v["gauc"] for d, v in final["per_domain"].items()}}
        rows = compare(frame, preds, runs, args.bootstrap, args.seed, refs)
        seeds = seed_summary(rows) if args.train_seeds else None
        out.write_text(json.dumps({"machine": machine, "config": config, "validation_rows": len(frame),
                                   "validation_clicks": int(frame["label"].sum()), "baseline": "pooling",
                                   "results": rows, **({"seed_summary": seeds} if seeds else {})}, indent=1))
    print(f"\nmachine: {format_machine(machine)}")
    print(f"data: {users} users, "
          f"{items} items, {days} days{''.join(' ' + o for o in args.sim)} ({meta.get('counts', {}).get('impressions', '?')} impressions, "
          f"{len(frame)} validation rows, {int(frame['label'].sum())} clicks), L={max_len}, {epochs} epochs x "
          f"batch {args.batch_size}, prep {prep_s:.0f}s")
    domains = sorted({d for r in rows for d in r.get("per_domain_auc", {})})
    head = (f"{'model':<18}{'AUC':>8}{'dAUC [95% CI]':>26}{'truthAUC':>9}{'dtruth [95% CI]':>26}{'GAUC':>8}{'logloss':>9}"
            + "".join(f"{'AUC d' + d:>9}" for d in domains) + f"{'train s':>9}")
    print(head)
    for r in rows:
        ci = f"{r['d_auc']:+.4f} [{r['d_auc_ci'][0]:+.4f},{r['d_auc_ci'][1]:+.4f}]" if "d_auc_ci" in r else "-"
        dt = (f"{r['d_truth_auc']:+.4f} [{r['d_truth_auc_ci'][0]:+.4f},{r['d_truth_auc_ci'][1]:+.4f}]"
              if "d_truth_auc" in r else "-")
        print(f"{r['model']:<18}{r['auc']:>8.4f}{ci:>26}{r['truth_auc']:>9.4f}{dt:>26}{r.get('gauc', float('nan')):>8.4f}"
              f"{r.get('logloss', float('nan')):>9.4f}"
              + "".join(f"{r.get('per_domain_auc', {}).get(d, float('nan')):>9.4f}" for d in domains)
              + f"{r.get('train_s', 0):>9.0f}")
    if args.train_seeds:
        print(f"\nover training seeds {','.join(map(str, args.train_seeds))} (d = model - pooling trained with the same seed)")
        print(f"{'model':<18}{'seeds':>6}{'truthAUC mean':>14}{'sd':>8}{'d mean':>9}{'d sd':>8}{'d min':>9}{'d max':>9}")
        for m, r in seeds.items():
            d = r.get("d_truth_auc", {})
            print(f"{m:<18}{r['n']:>6}{r['truth_auc_mean']:>14.4f}{r['truth_auc_sd']:>8.4f}"
                  + "".join(f"{d[k]:>{w}.4f}" if d else f"{'-':>{w}}" for k, w in (("mean", 9), ("sd", 8), ("min", 9), ("max", 9))))
    print(f"wrote {out}")


def seed_list(text: str) -> list[int]:
    """--train-seeds: distinct non-negative integers, comma-separated."""
    try:
        seeds = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"seeds must be distinct and >= 0, got {text!r}")
    return seeds


def seeded_runs(models: list[str], seeds: list[int], extra: dict[str, list[str]]) -> tuple[list[str], dict[str, list[str]]]:
    """Labels and overrides for one run per (model, seed): NAME for the first seed, NAME@seedS for the others; each
    inherits NAME's --set overrides and ends with its own `seed=S`."""
    names, out = [], dict(extra)
    for m in models:
        for i, s in enumerate(seeds):
            label = m if i == 0 else f"{m}@seed{s}"
            names.append(label)
            out[label] = extra.get(m, []) + [f"seed={s}"]
    return names, out


def seed_summary(rows: list[dict]) -> dict[str, dict]:
    """Per model over its seeds: truth AUC mean/sd, and the paired difference to pooling of the same seed."""
    by = {}
    for r in rows:
        if "steps" in r:  # trained runs only (not the oracle or the reference)
            base, _, seed = r["model"].partition("@seed")
            by.setdefault(base, {})[seed or "first"] = r["truth_auc"]
    out = {}
    for m, v in by.items():
        a = np.array(list(v.values()))
        out[m] = {"n": len(a), "truth_auc_mean": float(a.mean()), "truth_auc_sd": float(a.std(ddof=1)) if len(a) > 1 else 0.0}
        paired = [v[s] - by["pooling"][s] for s in v if m != "pooling" and s in by.get("pooling", {})]
        if paired:
            d = np.array(paired)
            out[m]["d_truth_auc"] = {"n": len(d), "mean": float(d.mean()), "sd": float(d.std(ddof=1)) if len(d) > 1 else 0.0,
                                     "min": float(d.min()), "max": float(d.max())}
    return out


def compare(frame, preds: dict, runs: dict, replicates: int, seed: int, refs: dict | None = None) -> list[dict]:
    """Per model (and reference score): truth AUC, and (vs pooling) paired user-bootstrap intervals of dAUC and
    d truth AUC."""
    y = frame["label"].to_numpy(np.float64)
    pt = frame["p_true"].to_numpy(np.float64)
    _, user_idx = np.unique(frame["user_id"].to_numpy(), return_inverse=True)
    rng = np.random.default_rng(seed)
    weights = rng.poisson(1.0, (replicates, user_idx.max() + 1)).astype(np.float64)[:, user_idx]
    refs = refs or {}
    models = {"oracle (true CTR)": np.log(pt / (1 - pt)), **refs, **preds}
    rows, boot = [], {}
    for name, s in models.items():
        order = np.argsort(s, kind="stable")
        r = dict(runs.get(name, {"model": name}))
        if name not in runs:
            r["auc"] = weighted_auc(order, y, 1 - y)
        if name in refs:
            r["reference"] = True
        r["truth_auc"] = weighted_auc(order, pt, 1 - pt)
        boot[name] = np.array([[weighted_auc(order, w * y, w * (1 - y)), weighted_auc(order, w * pt, w * (1 - pt))]
                               for w in weights])
        rows.append(r)
    if "pooling" in preds:
        for r in rows:
            if (r["model"] in preds or r["model"] in refs) and r["model"] != "pooling":
                d = boot[r["model"]] - boot["pooling"]
                r["d_auc"] = r["auc"] - runs["pooling"]["auc"]
                r["d_auc_ci"] = [float(np.quantile(d[:, 0], 0.025)), float(np.quantile(d[:, 0], 0.975))]
                r["d_truth_auc"] = r["truth_auc"] - next(x["truth_auc"] for x in rows if x["model"] == "pooling")
                r["d_truth_auc_ci"] = [float(np.quantile(d[:, 1], 0.025)), float(np.quantile(d[:, 1], 0.975))]
    return sorted(rows, key=lambda r: -r["truth_auc"])


if __name__ == "__main__":
    main()
