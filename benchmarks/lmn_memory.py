"""Claim: LMN with a memory of >= 1M slots (1024 x 1024 product keys) trains on the 2-core CPU machine.

Measures, in one run:
1. Train steps/s and RSS of LMN with n = 1024**2 slots vs the same model with a small memory (64**2 = 4096 slots)
   (the baseline; the pooling model with the same embeddings is printed as the floor of any model at this L),
   both as training runs them: wrapped in TorchRec DistributedModelParallel (1 process, gloo) with the tables
   (embeddings + the memory value table) updated by the fused row-wise Adagrad inside the backward, dense
   parameters by Adam. Also the 1M model with every history item reading the memory (memory_len = all).
2. Memory search per query: product-key top-K vs brute-force top-K over all 1M slots (same scores, same result).

Usage: .venv/bin/python benchmarks/lmn_memory.py [--quick]   (writes benchmarks/results/lmn_memory.json)
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from machine import format_machine, machine_info  # noqa: E402
from recsys.data.batch import BatchSpec, build_batch  # noqa: E402
from recsys.layers.product_key_memory import ProductKeyMemory  # noqa: E402
from recsys.models.lmn import LMNConfig, LMNRanker  # noqa: E402
from recsys.models.pooling import PoolingConfig, PoolingRanker  # noqa: E402


def rows(n: int, L: int, spec: BatchSpec, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    lens = rng.integers(L // 2, L + 1, n)
    lens[0] = L
    off = pa.array(np.concatenate([[0], np.cumsum(lens)]).astype(np.int32))
    tot = int(lens.sum())

    def lst(vals, typ):
        return pa.ListArray.from_arrays(off, pa.array(vals, typ))

    v = spec.vocab_sizes
    return pa.table({
        "ts": pa.array(np.full(n, 1_700_000_000_000), pa.timestamp("ms", tz="UTC")),
        "user_id": pa.array(rng.integers(0, v["user"], n), pa.int64()),
        "item_id": pa.array(rng.integers(0, v["item"], n), pa.int64()),
        "domain": pa.array(rng.integers(0, 3, n), pa.int32()),
        "item_category": pa.array(rng.integers(0, v["category"], n), pa.int64()),
        "label": pa.array(rng.integers(0, 2, n), pa.int8()),
        "seq_item_id": lst(rng.integers(0, v["item"], tot), pa.int64()),
        "seq_category": lst(rng.integers(0, v["category"], tot), pa.int64()),
        "seq_action": lst(rng.integers(1, 5, tot), pa.int8()),
        "seq_domain": lst(rng.integers(0, 3, tot), pa.int32()),
        "seq_time_gap": lst(rng.random(tot).astype(np.float32) * 1e5, pa.float32()),
    })


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def train_case(name: str, cfg, spec: BatchSpec, batches, steps: int, warmup: int) -> dict:
    from torchrec.distributed import DistributedModelParallel
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
    from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

    gc.collect()
    rss0 = rss_mb()
    torch.manual_seed(0)
    model = LMNRanker(cfg, spec) if isinstance(cfg, LMNConfig) else PoolingRanker(cfg, spec)
    from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection

    tables = [p for m in model.modules() if isinstance(m, (EmbeddingCollection, EmbeddingBagCollection)) for p in m.parameters()]
    apply_optimizer_in_backward(RowWiseAdagrad, tables, {"lr": 0.05})
    dmp = DistributedModelParallel(model, device=torch.device("cpu"))
    dense = [p for n, p in dmp.named_parameters() if "embedding_bags" not in n and "embeddings." not in n]
    opt = torch.optim.Adam(dense, lr=1e-3)
    times, losses = [], []
    for i in range(warmup + steps):
        b = batches[i % len(batches)]
        t = time.perf_counter()
        logits, aux = dmp(b, return_aux=True)
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, b.labels)
        loss = bce + aux
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t)
        losses.append((float(bce), float(aux)))
    n_params = sum(p.numel() for p in model.parameters())
    res = {
        "case": name,
        "slots": cfg.memory.n_slots if isinstance(cfg, LMNConfig) else 0,
        "memory_len": getattr(cfg, "memory_len", None),
        "params_M": round(n_params / 1e6, 2),
        "step_s": float(np.median(times)),
        "step_min_s": float(np.min(times)),
        "steps_per_s": 1.0 / float(np.median(times)),
        "rss_mb": rss_mb(),
        "rss_model_mb": rss_mb() - rss0,
        "bce_first_last": [losses[0][0], losses[-1][0]],
        "mem_loss_first_last": [losses[0][1], losses[-1][1]],
    }
    del dmp, model, opt
    gc.collect()
    return res


def search_case(n_keys: int, n_queries: int, key_dim: int, top_k: int) -> dict:
    from recsys.layers.product_key_memory import ProductKeyMemoryConfig

    mem = ProductKeyMemory(ProductKeyMemoryConfig(n_keys=n_keys, key_dim=key_dim, value_dim=4, top_k=top_k, topk_per_axis=top_k))
    q = torch.randn(n_queries, key_dim)
    with torch.no_grad():
        mem.search(q)
        t = time.perf_counter()
        for _ in range(3):
            _, pk = mem.search(q)
        t_pk = (time.perf_counter() - t) / 3
        t = time.perf_counter()
        bf = torch.cat([mem.brute_force_topk(c)[1] for c in q.split(64)])  # 64 x 1M scores per chunk
        t_bf = time.perf_counter() - t
    same = bool(torch.equal(pk.sort(-1).values, bf.sort(-1).values))
    return {"slots": n_keys**2, "queries": n_queries, "pk_ms_per_1k_queries": 1e3 * t_pk / n_queries * 1000,
            "brute_ms_per_1k_queries": 1e3 * t_bf / n_queries * 1000, "speedup": t_bf / t_pk, "identical_topk": same}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="B=32, L=500, fewer steps")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--seq-len", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    args = ap.parse_args()
    B = args.batch_size or (32 if args.quick else 64)
    L = args.seq_len or (500 if args.quick else 2000)
    steps = args.steps or (4 if args.quick else 8)
    warmup = 2
    machine = machine_info(["torch"])

    import torch.distributed as dist

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1")
    with tempfile.TemporaryDirectory():
        dist.init_process_group("gloo")
    spec = BatchSpec(max_len=L)
    batches = [build_batch(rows(B, L, spec, seed=s), spec) for s in range(3)]
    from recsys.config import read_yaml, validate

    path = Path(__file__).resolve().parent.parent / "configs/lmn.yaml"
    base = validate(LMNConfig, read_yaml(path)["model"], str(path))
    big = base
    small = base.model_copy(update={"memory": base.memory.model_copy(update={"n_keys": 64})})
    big_all = base.model_copy(update={"memory_len": None})
    try:
        results = [
            train_case("small memory (baseline)", small, spec, batches, steps, warmup),
            train_case("pooling model (no memory, ref.)", PoolingConfig(embedding=base.embedding), spec, batches, steps, warmup),
            train_case("1M memory, newest 256 read", big, spec, batches, steps, warmup),
            train_case("1M memory, all items read", big_all, spec, batches, max(2, steps // 2), 1),
        ]
    finally:
        dist.destroy_process_group()
    search = search_case(1024, 512 if args.quick else 2048, base.memory.key_dim, base.memory.top_k)

    info = {
        "machine": machine,
        "config": {"batch_size": B, "seq_len": L, "steps": steps, "quick": args.quick, "memory": base.memory.model_dump()},
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    print(f"# LMN memory benchmark  {format_machine(machine)}")
    print(f"# B={B} L={L} (full-length histories, lengths in [L/2, L]); steps={steps} after {warmup} warm-up; "
          f"DMP(1 proc, gloo) + fused row-wise Adagrad for tables, Adam for dense")
    print("# step = median train-step seconds, min = fastest step (less sensitive to other load on the box); "
          "ratio = min step / baseline's min step")
    print(f"{'case':32s} {'slots':>9s} {'mem_len':>7s} {'params(M)':>9s} {'step(s)':>8s} {'min(s)':>7s} {'steps/s':>8s} {'RSS(MB)':>8s} {'ratio':>6s}")
    b0 = results[0]["step_min_s"]
    for r in results:
        r["step_ratio_vs_baseline"] = r["step_min_s"] / b0
        print(f"{r['case']:32s} {r['slots']:9d} {str(r['memory_len']):>7s} {r['params_M']:9.2f} {r['step_s']:8.3f} "
              f"{r['step_min_s']:7.3f} {r['steps_per_s']:8.2f} {r['rss_mb']:8.0f} {r['step_ratio_vs_baseline']:6.2f}")
    print(f"load average during the run: {os.getloadavg()}")
    print(f"peak RSS of the whole run: {info['peak_rss_mb']:.0f} MB")
    print(f"\n# memory search, {search['slots']} slots, {search['queries']} queries (top-{base.memory.top_k})")
    print(f"product keys: {search['pk_ms_per_1k_queries']:.1f} ms / 1k queries; brute force: "
          f"{search['brute_ms_per_1k_queries']:.1f} ms / 1k queries; speedup {search['speedup']:.0f}x; "
          f"identical top-K: {search['identical_topk']}")
    out = Path(__file__).resolve().parent / "results" / "lmn_memory.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"info": info, "train": results, "search": search}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
