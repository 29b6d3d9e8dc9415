"""Vectorised nonparametric bootstrap of off-policy estimates (and of any mean/ratio statistic).

Why this design (shared/PERF-NOTES.md): at 10M rounds x 1000 resamples the bootstrap makes 1e10 draws; a
full-length random-index gather per resample is bound by main-memory latency. So:
- Each estimator is first reduced to per-round components (recsys.evaluation.ope.Estimate); only those rows are
  resampled, and the estimate of a resample is the estimator's rule applied to the resampled column sums.
- Exact block-multinomial resampling: for a resample of n rows drawn uniformly with replacement, the number of draws
  that land in each block of B=65,536 consecutive rows is Multinomial(n, block_size/n); inside a block the draws are
  uniform. So per (chunk of resamples, block) we draw the counts, then uniform 16-bit offsets straight from the bit
  generator's raw output (no rejection needed: the block size is 2^16), and sum the picked rows with one compiled
  sparse-matrix product (a CSR matrix of the picks times the block's rows; float32 values centred on the column
  mean, sums added in float64). The block's rows stay in cache across all resamples of the chunk. Same distribution as
  `values[rng.integers(0, n, n)]`, not an approximation.
- Sparse path: when the statistic is a plain mean and most rows are zero in every column (rare rewards: IPS), only the
  nonzero rows matter: the number of a resample's draws that hit them is Binomial(n, nnz/n) and, given that, they are
  uniform over the nonzero rows, so the same block kernel runs on the nnz rows only. Still exact.
- Resamples are split into chunks, each with its own `SeedSequence.spawn` stream, so the result depends on `seed`
  only, never on `workers`. With workers > 1 the chunks run on threads (every heavy call, the bit generator's bulk
  output, the numpy casts and the sparse product, releases the GIL), which splits the work across cores like separate
  processes without copying the value vectors.
- All estimates given in one call share the same resamples, so a paired A-B difference is the difference of their
  replicates (`paired_difference`): identical policies give exactly 0.
Intervals are percentile intervals of the replicates; the p-value of a paired difference inverts the percentile
interval: p = min(1, 2 min(P*(D <= 0), P*(D >= 0))) with the (1 + count) / (B + 1) correction.
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

from recsys.evaluation.ope import Estimate, combine

BLOCK = 1 << 16
SPARSE_MAX_FRACTION = 0.25


@dataclass
class Interval:
    name: str
    value: float
    lo: float
    hi: float
    se: float

    def as_dict(self) -> dict:
        return {"name": self.name, "value": self.value, "lo": self.lo, "hi": self.hi, "se": self.se}


@dataclass
class BootstrapResult:
    """Replicates of several estimates computed on the same resamples: draws[b, e] is estimate e on resample b."""

    names: list[str]
    point: np.ndarray  # (E,)
    draws: np.ndarray  # (B, E)
    alpha: float
    path: str  # "dense" | "sparse"

    def interval(self, i: int | str, alpha: float | None = None) -> Interval:
        i = self.names.index(i) if isinstance(i, str) else i
        a = self.alpha if alpha is None else alpha
        d = self.draws[:, i]
        d = d[np.isfinite(d)]
        if d.size == 0:
            nan = float("nan")
            return Interval(self.names[i], float(self.point[i]), nan, nan, nan)
        lo, hi = np.quantile(d, [a / 2, 1 - a / 2])
        return Interval(self.names[i], float(self.point[i]), float(lo), float(hi), float(d.std(ddof=1)) if d.size > 1 else 0.0)

    def intervals(self) -> list[Interval]:
        return [self.interval(i) for i in range(len(self.names))]


def paired_difference(result: BootstrapResult, a: int | str, b: int | str, alpha: float | None = None) -> dict:
    """Difference a - b with its percentile interval and two-sided bootstrap p-value (same resamples)."""
    ia = result.names.index(a) if isinstance(a, str) else a
    ib = result.names.index(b) if isinstance(b, str) else b
    alpha = result.alpha if alpha is None else alpha
    diff = float(result.point[ia] - result.point[ib])
    d = result.draws[:, ia] - result.draws[:, ib]
    d = d[np.isfinite(d)]
    B = d.size
    if B == 0:
        nan = float("nan")
        return {"diff": diff, "lo": nan, "hi": nan, "se": nan, "p_value": nan}
    lo, hi = np.quantile(d, [alpha / 2, 1 - alpha / 2])
    p = min(1.0, 2.0 * min((1 + np.count_nonzero(d <= 0)) / (B + 1), (1 + np.count_nonzero(d >= 0)) / (B + 1)))
    return {"diff": diff, "lo": float(lo), "hi": float(hi), "se": float(d.std(ddof=1)) if B > 1 else 0.0, "p_value": float(p)}


def _uniform_offsets(rng: np.random.Generator, size: int, count: int, out: np.ndarray) -> np.ndarray:
    """`count` uniform ints in [0, size) as int32 into out[:count] (raw 16-bit words when size == 2^16)."""
    dst = out[:count]
    if size == BLOCK:
        raw = rng.bit_generator.random_raw((count + 3) // 4)
        np.copyto(dst, raw.view(np.uint16)[:count], casting="unsafe")
    else:
        # exact: 32-bit words below the largest multiple of `size` (rejection), then modulo
        lim = ((1 << 32) // size) * size
        filled = 0
        while filled < count:
            need = count - filled
            raw = rng.bit_generator.random_raw((need + need // 8 + 65) // 2).view(np.uint32)
            raw = (raw[raw < np.uint32(lim)] if lim < (1 << 32) else raw)[:need]
            np.remainder(raw, np.uint32(size), out=raw)
            np.copyto(dst[filled : filled + raw.size], raw, casting="unsafe")
            filled += raw.size
    return dst


def _chunk_sums(table: np.ndarray, totals: np.ndarray, rng: np.random.Generator, block: int) -> np.ndarray:
    """Column sums of `len(totals)` resamples (resample r draws totals[r] rows of table uniformly): (R, k) float64.

    Per block, the picks of all R resamples form one sparse R x block matrix (CSR: row r holds resample r's picks,
    values 1), so its product with the block's rows is every resample's sum in one compiled pass (scipy's CSR kernel
    reads the int32 picks as they are, no index widening; it measured ~20% faster here than a fused
    embedding-bag sum and keeps torch out of the process).
    """
    from scipy.sparse import csr_matrix

    m, k = table.shape
    R = totals.size
    out = np.zeros((R, k), dtype=np.float64)
    if m == 0:
        return out
    nb = -(-m // block)
    sizes = np.full(nb, block, dtype=np.int64)
    sizes[-1] = m - block * (nb - 1)
    counts = rng.multinomial(totals.astype(np.int64), sizes / m) if nb > 1 else totals.astype(np.int64)[:, None]
    cap = int(counts.sum(axis=0).max(initial=0)) + 8
    buf = np.empty(cap, dtype=np.int32)
    ones = np.ones(cap, dtype=np.float32)
    indptr = np.empty(R + 1, dtype=np.int32)
    indptr[0] = 0
    for b in range(nb):
        c = counts[:, b]
        T = int(c.sum())
        if T == 0:
            continue
        size = int(sizes[b])
        idx = _uniform_offsets(rng, size, T, buf)
        np.cumsum(c, out=indptr[1:])
        picks = csr_matrix((ones[:T], idx, indptr), shape=(R, size))
        out += picks @ table[b * block : b * block + size]
    return out


def resample_sums(
    columns: np.ndarray,
    n_boot: int,
    seed: int | np.random.SeedSequence = 0,
    workers: int = 1,
    sparse: bool | Literal["auto"] = "auto",
    block: int = BLOCK,
    chunk: int | None = None,
) -> tuple[np.ndarray, str]:
    """Column sums of `n_boot` bootstrap resamples of the rows of `columns` (n, k): returns ((B, k), path).

    sparse=True requires the caller to combine with the fixed n (a mean): only nonzero rows are resampled.
    """
    cols = np.asarray(columns, dtype=np.float64)
    if cols.ndim == 1:
        cols = cols[:, None]
    n, k = cols.shape
    if n == 0:
        return np.full((n_boot, k), np.nan), "dense"
    nz_rows = None
    if sparse:
        nz = np.flatnonzero(cols[:, 0] != 0) if k == 1 else np.flatnonzero(np.any(cols != 0, axis=1))
        if sparse is True or nz.size <= SPARSE_MAX_FRACTION * n:
            nz_rows = nz
    path = "sparse" if nz_rows is not None else "dense"
    base = cols[nz_rows] if nz_rows is not None else cols
    center = base.mean(axis=0) if base.shape[0] else np.zeros(k)
    table = np.empty(base.shape, dtype=np.float32)
    for a in range(0, base.shape[0], 1 << 20):  # in row chunks: no full-size float64 temporary (RSS)
        np.subtract(base[a : a + (1 << 20)], center, out=table[a : a + (1 << 20)], casting="same_kind")
    m = table.shape[0]
    if chunk is None:
        # ~2M draws per (chunk, block) call keeps the index buffer small (RSS) and calls few
        chunk = max(1, min(n_boot, (1 << 21) // max(1, min(m, block))))
    n_chunks = -(-n_boot // chunk)
    ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    streams = ss.spawn(n_chunks)
    out = np.empty((n_boot, k), dtype=np.float64)

    def run(ci: int) -> None:
        lo, hi = ci * chunk, min(n_boot, (ci + 1) * chunk)
        rng = np.random.Generator(np.random.SFC64(streams[ci]))
        R = hi - lo
        if nz_rows is not None:
            totals = rng.binomial(n, m / n, size=R) if m else np.zeros(R, np.int64)
        else:
            totals = np.full(R, n, dtype=np.int64)
        s = _chunk_sums(table, totals, rng, block)
        out[lo:hi] = s + totals[:, None] * center[None, :]

    workers = max(1, min(int(workers), n_chunks))
    if workers == 1:
        for ci in range(n_chunks):
            run(ci)
    else:
        with ThreadPoolExecutor(workers) as ex:
            list(ex.map(run, range(n_chunks)))
    return out, path


def bootstrap(
    estimates: Sequence[Estimate],
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int | np.random.SeedSequence = 0,
    workers: int | None = 1,
    sparse: bool | Literal["auto"] = "auto",
    names: Sequence[str] | None = None,
) -> BootstrapResult:
    """Bootstrap replicates of several estimates on the SAME resamples of their common rounds.

    workers=None uses every core (os.cpu_count()). The sparse path is taken only when every estimate is a mean.
    """
    if not estimates:
        raise ValueError("bootstrap needs at least one estimate")
    n = estimates[0].n
    for e in estimates:
        if e.n != n:
            raise ValueError(f"estimate '{e.name}' has {e.n} rounds, expected {n}: estimates must share their rounds")
    all_mean = all(e.kind == "mean" for e in estimates)
    cols = estimates[0].components if len(estimates) == 1 else np.concatenate([e.components for e in estimates], axis=1)
    sp = sparse if all_mean else False
    w = (os.cpu_count() or 1) if workers is None else workers
    sums, path = resample_sums(cols, n_boot, seed=seed, workers=w, sparse=sp)
    draws = np.empty((n_boot, len(estimates)), dtype=np.float64)
    j = 0
    for i, e in enumerate(estimates):
        kc = e.components.shape[1]
        draws[:, i] = combine(e.kind, sums[:, j : j + kc], n)
        j += kc
    return BootstrapResult(
        names=list(names) if names is not None else [e.name for e in estimates],
        point=np.array([e.value for e in estimates], dtype=np.float64),
        draws=draws,
        alpha=alpha,
        path=path,
    )


def bootstrap_mean(values: np.ndarray, **kw) -> BootstrapResult:
    """Convenience: bootstrap of the mean of one 1-D vector."""
    v = np.asarray(values, dtype=np.float64)
    return bootstrap([Estimate("mean", float(v.mean()), v[:, None], "mean")], **kw)


def normal_interval(values: np.ndarray, alpha: float = 0.05) -> tuple[float, float]:
    """Normal-approximation interval of a mean (mean -+ z * sd / sqrt(n)), the reference the bootstrap should match."""
    from statistics import NormalDist

    v = np.asarray(values, dtype=np.float64)
    z = NormalDist().inv_cdf(1 - alpha / 2)
    h = z * v.std(ddof=1) / math.sqrt(v.size)
    return float(v.mean() - h), float(v.mean() + h)
