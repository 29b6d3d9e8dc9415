"""Training throughput claims (PERF-NOTES.md targets), each against its baseline in the same run:

1. 2 Ray workers vs 1 Ray worker: steady-state examples/s of `recsys train` (same code path, pooling model,
   simulator data through the feature store). Target >= 1.5x. Then: no Ray process of the run is left.
2. TorchRec fused embeddings (DMP, row-wise Adagrad inside the backward) vs the same model unsharded with plain
   nn.Embedding tables updated by the dense optimizer (AdamW over every parameter, dense gradients): step time on
   identical batches, world size 1, large tables (the regime sharded embeddings exist for). Target >= 2x.
3. bf16 autocast vs fp32 step time (fused DMP, world size 1) for the pooling model and a small LONGER.

Examples/s come from the trainer's own metrics.jsonl (rank 0, windows of log_every_steps, first window dropped).
Usage: .venv/bin/python benchmarks/bench_training.py [--quick]   (writes benchmarks/results/bench_training.json)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from machine import format_machine, machine_info  # noqa: E402
from recsys.config import load_config  # noqa: E402
from recsys.data.batch import BatchSpec, build_batch  # noqa: E402
from recsys.training.config import TrainConfig  # noqa: E402
from recsys.training.data import find_table_files, make_spec, read_training, rank_rows  # noqa: E402


def make_data(work: Path, quick: bool) -> Path:
    from feature_store.definitions import load_feature_config
    from feature_store.offline import build_training_table
    from recsys.data.simulator import SimulatorConfig, simulate

    raw = work / "sim"
    users, items, days = (1000, 3000, 4) if quick else (2000, 5000, 7)
    simulate(load_config(SimulatorConfig, None, [f"users={users}", f"items={items}", f"days={days}", "seed=0"]), raw)
    build_training_table(raw, raw, load_feature_config(None, ["max_len=64", "progress=false"]))
    return raw


def ray_processes_of(tmp: str) -> list[int]:
    out = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if tmp in " ".join(p.info["cmdline"] or []):
                out.append(p.pid)
        except psutil.Error:
            pass
    return out


def bench_workers(data: Path, work: Path, steps: int) -> dict:
    """1 worker (all cores as intra-op threads), 1 worker (1 thread), 2 workers (1 thread each)."""
    from pipelines.train_ranker import RAY_TEMP_FILE, run_training

    res = {}
    cores = os.cpu_count() or 1
    for key, workers, threads in (("1w", 1, cores), ("1w_1thread", 1, 1), ("2w", 2, max(1, cores // 2))):
        run = work / f"run_{key}"
        os.environ["RECSYS_THREADS_PER_WORKER"] = str(threads)
        t0 = time.perf_counter()
        try:
            run_training(ROOT / "configs/pooling.yaml", data, run, workers=workers, use_ray=True, overrides=[
                "epochs=1", f"max_steps={steps}", "log_every_steps=10", "checkpoint_every_steps=100000",
                "data.batch_size=256", "data.max_len=64", "device=cpu"])
        finally:
            os.environ.pop("RECSYS_THREADS_PER_WORKER", None)
        wall = time.perf_counter() - t0
        recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        eps = [r["examples_per_s"] for r in recs if r["kind"] == "train"][1:]
        tmp = (run / RAY_TEMP_FILE).read_text()
        children = [c for c in psutil.Process().children(recursive=True) if "ray" in " ".join(c.cmdline()).lower()]
        res[key] = {
            "workers": workers, "threads_per_worker": threads,
            "examples_per_s_median": statistics.median(eps),
            "examples_per_s_windows": [round(e) for e in eps],
            "wall_s_incl_ray_start": round(wall, 1),
            "ray_processes_left": len(ray_processes_of(tmp)) + len(children),
            "load_avg_1m_after": os.getloadavg()[0],
        }
    res["ratio_2_vs_1"] = res["2w"]["examples_per_s_median"] / res["1w"]["examples_per_s_median"]
    res["ratio_2_vs_1_single_thread"] = res["2w"]["examples_per_s_median"] / res["1w_1thread"]["examples_per_s_median"]
    return res


def _batches(data: Path, spec: BatchSpec, n: int, bs: int):
    table = read_training(find_table_files(data), spec.max_len)
    rows = rank_rows(table.num_rows, 0, 1, 0, 0, True)
    import pyarrow as pa

    return [build_batch(table.take(pa.array(rows[i * bs:(i + 1) * bs])), spec) for i in range(n)]


def _interleaved(steps: dict, batches, warmup: int, rounds: int) -> dict[str, float]:
    """Median seconds per step of each step function, measured in alternating rounds (A B A B ...) over the same
    batches, so load changes on a shared machine hit both sides alike."""
    for fn in steps.values():  # warmup also first-touches the table pages the batches use
        for b in batches[:warmup]:
            fn(b)
    per = {k: [] for k in steps}
    rest = batches[warmup:]
    for _ in range(rounds):
        for k, fn in steps.items():
            t = time.perf_counter()
            for b in rest:
                fn(b)
            per[k].append((time.perf_counter() - t) / len(rest))
    return {k: statistics.median(v) for k, v in per.items()}


def bench_fused_vs_plain_and_bf16(data: Path, steps: int, rounds: int, quick: bool) -> dict:
    from recsys.training.distributed import init_distributed, shutdown
    from recsys.training.loop import build_training_model, shard_for_training

    ctx = init_distributed(torch.device("cpu"))
    out: dict = {}
    try:
        files = find_table_files(data)
        big = {"item": 500_000 if quick else 2_000_000, "user": 200_000 if quick else 500_000}

        def cfg_for(name: str, precision: str, extra: list[str]) -> tuple[TrainConfig, BatchSpec]:
            cfg = load_config(TrainConfig, ROOT / f"configs/{name}.yaml", [
                "device=cpu", f"precision={precision}", "data.max_len=64", "data.batch_size=256",
                f"data.vocab_sizes={{item: {big['item']}, user: {big['user']}}}", *extra])
            return cfg, make_spec(files, cfg.data)

        # --- fused DMP vs plain nn.Embedding + AdamW ----------------------------------------------------------
        cfg, spec = cfg_for("pooling", "fp32", [])
        batches = _batches(data, spec, steps, cfg.data.batch_size)

        def fused_step_fn(cfg):
            torch.manual_seed(0)
            dmp, opt, dense, _ = shard_for_training(build_training_model(cfg, spec), cfg, torch.device("cpu"))

            def step(b):
                ctxm = torch.autocast("cpu", dtype=torch.bfloat16) if cfg.precision == "bf16" else torch.autocast("cpu", enabled=False)
                with ctxm:
                    logits, aux = dmp(b, return_aux=True)
                loss = F.binary_cross_entropy_with_logits(logits.float(), b.labels) + aux.float()
                opt.zero_grad()
                loss.backward()
                opt.step()
            return step

        torch.manual_seed(0)
        plain = build_training_model(cfg, spec)
        popt = torch.optim.AdamW(plain.parameters(), lr=1e-3)

        def plain_step(b):
            loss = F.binary_cross_entropy_with_logits(plain(b), b.labels)
            popt.zero_grad()
            loss.backward()
            popt.step()

        n_params = sum(p.numel() for p in plain.parameters())
        t = _interleaved({"fused": fused_step_fn(cfg), "plain": plain_step}, batches, 4, rounds)
        t_fused, t_plain = t["fused"], t["plain"]
        del plain, popt
        out["fused_vs_plain"] = {
            "model": "pooling", "params": n_params, "vocab": big, "batch_size": cfg.data.batch_size,
            "fused_step_ms": t_fused * 1e3, "plain_step_ms": t_plain * 1e3, "speedup": t_plain / t_fused,
        }

        # --- bf16 vs fp32 ---------------------------------------------------------------------------------------
        out["bf16_vs_fp32"] = {}
        models = {"pooling": [], "longer": ["model.merge_k=4", "model.recent_k=8", "model.self_layers=1", "data.batch_size=64"]}
        for name, extra in models.items():
            fns, bts = {}, None
            for prec in ("fp32", "bf16"):
                c, s = cfg_for(name, prec, ["data.vocab_sizes={item: 50000, user: 20000}"] + extra)
                bts = bts or _batches(data, s, steps, c.data.batch_size)
                fns[prec] = fused_step_fn(c)
            times = _interleaved(fns, bts, 4, rounds)
            out["bf16_vs_fp32"][name] = {"fp32_step_ms": times["fp32"] * 1e3, "bf16_step_ms": times["bf16"] * 1e3,
                                          "bf16_speedup": times["fp32"] / times["bf16"]}
    finally:
        shutdown(ctx)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller data, fewer steps, smaller tables")
    ap.add_argument("--data", type=Path, help="existing training table / data dir (default: simulate one)")
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    info = machine_info(["torch", "torchrec", "ray"])
    print("machine:", format_machine(info))
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        work = Path(tmp)
        data = args.data or make_data(work, args.quick)
        res = {"machine": info, "quick": args.quick}
        res["fused"] = bench_fused_vs_plain_and_bf16(data, 12 if args.quick else 24, 3 if args.quick else 5, args.quick)
        res["workers"] = bench_workers(data, work, 80 if args.quick else 200)
    res["machine"]["load_avg_1m_at_end"] = os.getloadavg()[0]
    w, f = res["workers"], res["fused"]
    print("\n| claim | baseline | ours | ratio | target |")
    print("|---|---|---|---|---|")
    print(f"| examples/s, 2 Ray workers vs 1 ({w['1w']['threads_per_worker']} threads) | {w['1w']['examples_per_s_median']:.0f} | {w['2w']['examples_per_s_median']:.0f} | {w['ratio_2_vs_1']:.2f}x | >= 1.5x |")
    print(f"| examples/s, 2 Ray workers vs 1 (1 thread) | {w['1w_1thread']['examples_per_s_median']:.0f} | {w['2w']['examples_per_s_median']:.0f} | {w['ratio_2_vs_1_single_thread']:.2f}x | |")
    fv = f["fused_vs_plain"]
    print(f"| step ms, fused TorchRec vs nn.Embedding+AdamW ({fv['params'] / 1e6:.0f}M params) | {fv['plain_step_ms']:.1f} | {fv['fused_step_ms']:.1f} | {fv['speedup']:.2f}x | >= 2x |")
    for name, r in f["bf16_vs_fp32"].items():
        print(f"| step ms, bf16 vs fp32 ({name}) | {r['fp32_step_ms']:.1f} | {r['bf16_step_ms']:.1f} | {r['bf16_speedup']:.2f}x | (paper: +18% on GPU) |")
    left = sum(w[k]["ray_processes_left"] for k in ("1w", "1w_1thread", "2w"))
    print(f"Ray processes left after the runs: {left}")
    out = ROOT / "benchmarks/results/bench_training.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(f"wrote {out}")
    if left:
        sys.exit(1)


if __name__ == "__main__":
    main()
