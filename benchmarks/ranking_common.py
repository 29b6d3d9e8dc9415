"""Shared pieces of the ranking-model benchmarks: full-length synthetic batches and the peak-memory probe.

Peak memory method: `torch.profiler` with `profile_memory=True` records every allocation and free of torch's CPU
allocator (signed byte counts with timestamps, `[memory]` events of the Kineto trace). Sorting them by time and
taking the maximum of the running sum gives the peak of live tensor bytes allocated *during* the measured call,
above what was live before it (parameters, optimizer state and inputs are excluded because they already exist).
Unlike RSS deltas it does not depend on glibc's free-list caching or page reuse, and unlike tracemalloc it sees
tensor storage (tracemalloc only tracks Python's allocator). It misses non-torch allocations (numpy, Python objects),
which are negligible inside a model step. Timings are measured in separate runs, without the profiler.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from recsys.data.batch import BatchSpec, Candidates, RankingBatch, build_batch  # noqa: E402

VOCAB = {"item": 20_000, "category": 200, "action": 5, "domain": 4, "user": 1_000}


def spec_for(max_len: int) -> BatchSpec:
    return BatchSpec(max_len=max_len, vocab_sizes=dict(VOCAB))


def full_rows(n: int, length: int, seed: int = 0) -> pa.Table:
    """n impressions, each with exactly `length` history events (the worst case the benchmarks are about)."""
    rng = np.random.default_rng(seed)

    def lists(values: np.ndarray, typ: pa.DataType) -> pa.Array:
        offsets = pa.array(np.arange(n + 1, dtype=np.int32) * length)
        return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1), typ))

    gaps = np.sort(rng.exponential(86_400 * 30, (n, length)).astype(np.float32), axis=1)[:, ::-1]  # oldest first
    return pa.table({
        "ts": pa.array(1_700_000_000_000 + np.arange(n, dtype=np.int64), pa.timestamp("ms", tz="UTC")),
        "user_id": pa.array(rng.integers(0, VOCAB["user"], n), pa.int64()),
        "item_id": pa.array(rng.integers(0, VOCAB["item"], n), pa.int64()),
        "domain": pa.array(rng.integers(0, 3, n), pa.int32()),
        "item_category": pa.array(rng.integers(0, VOCAB["category"], n), pa.int64()),
        "label": pa.array(rng.integers(0, 2, n), pa.int8()),
        "seq_item_id": lists(rng.integers(0, VOCAB["item"], (n, length)), pa.int64()),
        "seq_category": lists(rng.integers(0, VOCAB["category"], (n, length)), pa.int64()),
        "seq_action": lists(rng.integers(1, 5, (n, length)).astype(np.int8), pa.int8()),
        "seq_domain": lists(rng.integers(0, 3, (n, length)).astype(np.int32), pa.int32()),
        "seq_time_gap": lists(np.ascontiguousarray(gaps), pa.float32()),
    })


def full_batch(n: int, length: int, seed: int = 0) -> RankingBatch:
    return build_batch(full_rows(n, length, seed), spec_for(length))


def random_candidates(B: int, C: int, seed: int = 0) -> Candidates:
    g = torch.Generator().manual_seed(seed)
    return Candidates(torch.randint(0, VOCAB["item"], (B, C), generator=g), torch.randint(0, VOCAB["category"], (B, C), generator=g))


def peak_alloc_bytes(fn: Callable[[], object]) -> int:
    """Peak live bytes allocated by torch's CPU allocator during fn() (see the module docstring)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    cur = peak = 0
    for e in events:
        cur += e.nbytes()
        peak = max(peak, cur)
    return peak


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> dict[str, object]:
    """Wall and process-CPU seconds per call. The machine is shared (load often > cores), so the summary is the
    minimum over repeats (the least-disturbed run); the median and every sample are kept too."""
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return {"min_s": min(wall), "median_s": sorted(wall)[len(wall) // 2], "wall_s": wall, "cpu_s": cpu}

