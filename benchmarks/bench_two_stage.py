"""Claim: LONGER's two-stage (KV-cached) scoring of C candidates for one user at L=2000 is >= 20x faster than the
full forward per candidate batch, with equal outputs (PERF-NOTES.md). Measured for C = 100, 500, 1000.

- Two-stage: `encode_user(batch of 1 user)` (sequence side once: merged tokens and their per-layer K/V) +
  `score(state, C candidates)` (only the C candidates' m global tokens run, batched over C). Timed together = the
  latency of one request; the score-only part is reported too.
- Baseline (same run): `forward` on the user replicated once per candidate (`RankingBatch.expand`), processed in
  batches of `--chunk` rows (so memory stays bounded; what a server without the cache would do).
- Equality: max |two-stage - full forward| over the C logits (fp32; the contract is <= 1e-5).
Model: LONGER as in configs/longer.yaml (d_model 64, K=8 with InnerTrans, k=100, 2 self layers, m=4), eval mode,
no grad. Timings: minimum over `--repeats` (the machine is shared), `--threads` torch threads (default 1).

Usage: .venv/bin/python benchmarks/bench_two_stage.py [--quick] [--cands 100 500 1000] [--length 2000]
--quick: C = 100, 500 and 1 repeat of the baseline. Writes benchmarks/results/bench_two_stage.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import format_machine, machine_info  # noqa: E402
from ranking_common import ROOT, full_batch, random_candidates, spec_for, timed  # noqa: E402

from recsys.config import read_yaml, validate  # noqa: E402
from recsys.models.longer import LongerConfig, LongerRanker  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cands", type=int, nargs="+", default=[100, 500, 1000])
    ap.add_argument("--length", type=int, default=2000)
    ap.add_argument("--chunk", type=int, default=100, help="rows per full-forward batch in the baseline")
    ap.add_argument("--repeats", type=int, default=5, help="two-stage repeats")
    ap.add_argument("--baseline-repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_two_stage.json")
    args = ap.parse_args()
    if args.quick:
        args.cands, args.baseline_repeats = [100, 500], 1
    torch.set_num_threads(args.threads)
    info = machine_info(["torch", "torchrec"])
    model_cfg = read_yaml(ROOT / "configs" / "longer.yaml")["model"]
    cfg = validate(LongerConfig, model_cfg, "configs/longer.yaml")
    print("machine:", format_machine(info))
    print(f"config: L={args.length} C={args.cands} chunk={args.chunk} threads={args.threads} model=configs/longer.yaml "
          f"(d_model={cfg.d_model}, K={cfg.merge_k}, k={cfg.recent_k}, N={cfg.self_layers}, m={len(cfg.global_tokens)})")
    torch.manual_seed(0)
    model = LongerRanker(cfg, spec_for(args.length)).eval()
    user = full_batch(1, args.length, seed=1)
    rows = []
    hdr = f"{'C':>6} | {'two-stage ms':>12} {'(score ms)':>10} | {'full fwd ms':>11} | {'speedup':>8} | {'max|diff|':>9}"
    print(hdr)
    print("-" * len(hdr))
    with torch.no_grad():
        model.score(model.encode_user(user), random_candidates(1, 8))  # warm-up
        for C in args.cands:
            cands = random_candidates(1, C, seed=C)
            two_stage = timed(lambda: model.score(model.encode_user(user), cands), args.repeats)
            state = model.encode_user(user)
            score_only = timed(lambda: model.score(state, cands), args.repeats)
            expanded = user.expand(cands)

            def full() -> torch.Tensor:
                return torch.cat([model(expanded.select(torch.arange(s, min(s + args.chunk, C))))
                                  for s in range(0, C, args.chunk)])

            baseline = timed(full, args.baseline_repeats, warmup=0)
            diff = (model.score(state, cands)[0] - full()).abs().max().item()
            row = {"C": C, "two_stage": two_stage, "score_only": score_only, "full_forward": baseline,
                   "speedup": baseline["min_s"] / two_stage["min_s"], "max_abs_diff": diff,
                   "cache_bytes": state.nbytes()}
            rows.append(row)
            print(f"{C:>6} | {two_stage['min_s'] * 1e3:>12.1f} {score_only['min_s'] * 1e3:>10.1f} | "
                  f"{baseline['min_s'] * 1e3:>11.0f} | {row['speedup']:>7.1f}x | {diff:>9.2e}", flush=True)
    t500 = next((r for r in rows if r["C"] == 500), None)
    verdict = None
    if t500 is not None:
        verdict = {"speedup_at_500": t500["speedup"], "max_abs_diff_at_500": t500["max_abs_diff"],
                   "meets_target": t500["speedup"] >= 20 and t500["max_abs_diff"] <= 1e-5}
        print(f"target at C=500, L={args.length}: >= 20x lower latency, equal outputs -> {t500['speedup']:.1f}x, "
              f"max|diff| {t500['max_abs_diff']:.1e}: {'MET' if verdict['meets_target'] else 'NOT MET'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    conf = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    args.out.write_text(json.dumps({"machine": info, "config": conf, "model": cfg.model_dump(), "rows": rows,
                                    "target": verdict}, indent=2))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
