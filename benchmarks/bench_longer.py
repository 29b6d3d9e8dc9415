"""Claim: a LONGER train step at L=2048 is >= 3x faster and uses <= 0.5x the peak memory of a vanilla
full-attention Transformer ranker (PERF-NOTES.md), measured here at L = 256, 1024, 2048, 4096.

Both models in the same run, built from configs/longer.yaml and configs/transformer.yaml: same embedder (TorchRec
EmbeddingCollection, dim 32), same side info, same block width (d_model 64, 4 heads, FFN x4), same depth
(LONGER: 1 cross-causal + 2 self-causal layers; Transformer: 3 layers):
- LONGER: K=8 token merge (item_dim 8 -> merged width 64) with InnerTrans, k=100 recent query tokens, m=4 globals.
- Transformer: full self-attention over all L items + the candidate token (F.scaled_dot_product_attention, the
  fused O(L)-memory kernel, so the baseline is not handicapped by materialised L x L scores).
A train step = forward + BCE + backward + Adam step on all parameters (embedding tables included, unsharded).
Time: minimum over `--repeats` steps after one warm-up step (the machine is shared; the minimum is the
least-disturbed run; medians and all samples are in the JSON), with `--threads` torch threads (default 1, which
suffers least from other jobs on the 2 shared cores). Peak memory: torch allocator peak during one step,
from the profiler's allocation events (benchmarks/ranking_common.py explains the method), after the warm-up (so
Adam's state is already allocated and not counted for either model).

Usage: .venv/bin/python benchmarks/bench_longer.py [--quick] [--lengths 256 1024 2048 4096] [--batch 8]
--quick: batch 4, 2 repeats. Writes benchmarks/results/bench_longer.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import format_machine, machine_info  # noqa: E402
from ranking_common import ROOT, full_batch, peak_alloc_bytes, spec_for, timed  # noqa: E402

from recsys.config import read_yaml, validate  # noqa: E402
from recsys.models.longer import LongerConfig, LongerRanker  # noqa: E402
from recsys.models.transformer import TransformerConfig, TransformerRanker  # noqa: E402


def build(name: str, L: int, args) -> torch.nn.Module:
    """The model blocks of configs/longer.yaml and configs/transformer.yaml with the benchmark's shared overrides."""
    torch.manual_seed(0)
    common = {"d_model": args.d_model, "bf16": args.bf16, "activation_checkpointing": args.checkpointing}
    cls_cfg, cls_model = (LongerConfig, LongerRanker) if name == "longer" else (TransformerConfig, TransformerRanker)
    data = {**read_yaml(ROOT / "configs" / f"{name}.yaml")["model"], **common}
    return cls_model(validate(cls_cfg, data, f"configs/{name}.yaml"), spec_for(L))


def measure(name: str, L: int, args) -> dict:
    model = build(name, L, args).train()
    batch = full_batch(args.batch, L, seed=L)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step():
        loss = F.binary_cross_entropy_with_logits(model(batch), batch.labels)
        opt.zero_grad(set_to_none=False)
        loss.backward()
        opt.step()

    t = timed(step, args.repeats, warmup=1)
    peak = peak_alloc_bytes(step)
    return {"step_s": t["min_s"], "timing": t, "peak_mib": peak / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 2048, 4096])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast in both models")
    ap.add_argument("--checkpointing", action="store_true", help="activation checkpointing in both models")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--quick", action="store_true", help="batch 4, 2 repeats")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_longer.json")
    args = ap.parse_args()
    if args.quick:
        args.batch, args.repeats = 4, 2
    torch.set_num_threads(args.threads)
    info = machine_info(["torch", "torchrec"])
    print("machine:", format_machine(info))
    print(f"config: batch={args.batch} d_model={args.d_model} repeats={args.repeats} bf16={args.bf16} "
          f"checkpointing={args.checkpointing} lengths={args.lengths}")
    for name in ("longer", "transformer"):  # process warm-up (thread pools, allocator, kernels) before measuring
        measure(name, 64, argparse.Namespace(**{**vars(args), "batch": 2, "repeats": 1}))
    rows = []
    hdr = f"{'L':>6} | {'LONGER s':>9} {'Transf. s':>9} {'speedup':>8} | {'LONGER MiB':>10} {'Transf. MiB':>11} {'mem ratio':>9}"
    print(hdr)
    print("-" * len(hdr))
    for L in args.lengths:
        lo = measure("longer", L, args)
        tr = measure("transformer", L, args)
        row = {"L": L, "longer": lo, "transformer": tr, "speedup": tr["step_s"] / lo["step_s"],
               "memory_ratio": lo["peak_mib"] / tr["peak_mib"]}
        rows.append(row)
        print(f"{L:>6} | {lo['step_s']:>9.3f} {tr['step_s']:>9.3f} {row['speedup']:>7.2f}x | "
              f"{lo['peak_mib']:>10.1f} {tr['peak_mib']:>11.1f} {row['memory_ratio']:>8.3f}x", flush=True)
    target = next((r for r in rows if r["L"] == 2048), None)
    verdict = None
    if target is not None:
        verdict = {"speedup_at_2048": target["speedup"], "memory_ratio_at_2048": target["memory_ratio"],
                   "meets_target": target["speedup"] >= 3 and target["memory_ratio"] <= 0.5}
        print(f"target at L=2048: >= 3x faster, <= 0.5x memory -> {target['speedup']:.2f}x, "
              f"{target['memory_ratio']:.3f}x: {'MET' if verdict['meets_target'] else 'NOT MET'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cfg = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    args.out.write_text(json.dumps({"machine": info, "config": cfg, "rows": rows, "target": verdict,
                                    "memory_method": "torch profiler allocation events, peak of running sum"}, indent=2))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
