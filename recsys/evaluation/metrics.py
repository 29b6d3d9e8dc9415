"""Ranking and classification metrics in numpy: the project's one implementation (training and replay use these).

Why our own: GAUC and the per-request ranking metrics need grouping that the stock libraries do not do, and the
replay needs per-unit vectors (one value per impression / user / request) so that intervals come from the
bootstrap of a 1-D vector (see recsys.evaluation.bootstrap). Checked against scikit-learn in tests.

Conventions:
- `auc(labels, scores)`: Mann-Whitney statistic, ties count 1/2 (= sklearn.metrics.roc_auc_score). NaN when only
  one class is present.
- `gauc(users, labels, scores)`: per-user AUC averaged with weights = the user's number of impressions, over users
  that have both a positive and a negative (the usual industrial definition).
- `logloss(labels, probs)`: mean binary cross-entropy, probabilities clipped to [eps, 1-eps].
- Ranking metrics per group (request): items of a group are ranked by descending score (ties broken by the input
  order, i.e. stably); relevance is binary (label > 0). HR@K = 1 if any relevant item is in the top K;
  NDCG@K = DCG@K / IDCG@K with gain 1/log2(rank+1); MRR = 1 / rank of the first relevant item (no cutoff).
  Groups without any relevant item are skipped (their value would be undefined for NDCG and 0 for everything else).
"""
from __future__ import annotations

import numpy as np


def _as1d(x, dtype=np.float64) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x, dtype=dtype).reshape(-1))


def _average_ranks(scores: np.ndarray) -> np.ndarray:
    """1-based ranks, ties get the average rank (like scipy.stats.rankdata)."""
    order = np.argsort(scores, kind="stable")
    s = scores[order]
    n = s.size
    boundaries = np.flatnonzero(np.diff(s)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [n]])
    avg = (starts + ends + 1) / 2.0  # mean of 1-based ranks starts+1..ends
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def auc_placements(labels, scores) -> tuple[float, np.ndarray]:
    """AUC and its per-row influence vector u with mean(u) == AUC (DeLong placements, linearised).

    u_i = AUC + n/n1 * (V10_i - AUC) for positives and AUC + n/n0 * (V01_i - AUC) for negatives, where V10_i is
    the fraction of negatives scored below positive i (ties 1/2) and V01_j the fraction of positives scored above
    negative j. The variance of mean(u) is DeLong's variance, so bootstrapping u gives AUC intervals without
    recomputing the AUC per resample.
    """
    y = _as1d(labels) > 0
    s = _as1d(scores)
    n = y.size
    n1 = int(y.sum())
    n0 = n - n1
    if n1 == 0 or n0 == 0:
        return float("nan"), np.full(n, np.nan)
    r = _average_ranks(s)
    # rank among all - rank among positives = number of negatives below (ties 1/2)
    rp = _average_ranks(s[y])
    v10 = (r[y] - rp) / n0
    rn = _average_ranks(s[~y])
    v01 = 1.0 - (r[~y] - rn) / n1  # fraction of positives above negative j (ties 1/2)
    a = float(v10.mean())
    u = np.empty(n, dtype=np.float64)
    u[y] = a + n / n1 * (v10 - a)
    u[~y] = a + n / n0 * (v01 - a)
    return a, u


def auc(labels, scores) -> float:
    y = _as1d(labels) > 0
    s = _as1d(scores)
    n1 = int(y.sum())
    n0 = y.size - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    r = _average_ranks(s)
    return float((r[y].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def _group_index(groups) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique group ids, inverse index) for any integer group array."""
    g = np.asarray(groups).reshape(-1)
    uniq, inv = np.unique(g, return_inverse=True)
    return uniq, inv.reshape(-1)


def per_group_auc(groups, labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(group ids, AUC per group (NaN when one class only), impressions per group). Vectorised over groups."""
    uniq, inv = _group_index(groups)
    y = _as1d(labels) > 0
    s = _as1d(scores)
    g = inv.astype(np.int64)
    G = uniq.size
    # average ranks of scores within each group: sort by (group, score)
    order = np.lexsort((s, g))
    gs, ss = g[order], s[order]
    n = s.size
    new_run = np.ones(n, dtype=bool)
    new_run[1:] = (gs[1:] != gs[:-1]) | (ss[1:] != ss[:-1])
    run_start = np.flatnonzero(new_run)
    run_end = np.append(run_start[1:], n)
    group_start = np.searchsorted(gs, np.arange(G), side="left")
    start_in_group = run_start - group_start[gs[run_start]]
    end_in_group = run_end - group_start[gs[run_start]]
    avg = (start_in_group + end_in_group + 1) / 2.0
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.repeat(avg, run_end - run_start)
    cnt = np.bincount(g, minlength=G).astype(np.float64)
    n1 = np.bincount(g, weights=y.astype(np.float64), minlength=G)
    n0 = cnt - n1
    rsum = np.bincount(g, weights=np.where(y, ranks, 0.0), minlength=G)
    with np.errstate(invalid="ignore", divide="ignore"):
        a = (rsum - n1 * (n1 + 1) / 2.0) / (n1 * n0)
    a[(n1 == 0) | (n0 == 0)] = np.nan
    return uniq, a, cnt


def gauc(users, labels, scores) -> float:
    _, a, cnt = per_group_auc(users, labels, scores)
    ok = ~np.isnan(a)
    if not ok.any():
        return float("nan")
    return float(np.sum(a[ok] * cnt[ok]) / np.sum(cnt[ok]))


def logloss_values(labels, probs, eps: float = 1e-7) -> np.ndarray:
    y = _as1d(labels)
    p = np.clip(_as1d(probs), eps, 1.0 - eps)
    return -(y * np.log(p) + (1.0 - y) * np.log1p(-p))


def logloss(labels, probs, eps: float = 1e-7) -> float:
    return float(logloss_values(labels, probs, eps).mean())


def ranking_values(groups, labels, scores, k: int) -> dict[str, np.ndarray]:
    """Per-group HR@K, NDCG@K and MRR for groups with at least one relevant item (dict of 1-D arrays + 'group')."""
    uniq, inv = _group_index(groups)
    y = _as1d(labels) > 0
    s = _as1d(scores)
    g = inv.astype(np.int64)
    G = uniq.size
    n = s.size
    # stable descending sort within group: key (group asc, score desc, input order asc)
    order = np.lexsort((np.arange(n), -s, g))
    gs = g[order]
    ys = y[order]
    group_start = np.searchsorted(gs, np.arange(G), side="left")
    rank = np.arange(n) - group_start[gs] + 1  # 1-based rank within the group
    gain = np.where(ys & (rank <= k), 1.0 / np.log2(rank + 1.0), 0.0)
    dcg = np.bincount(gs, weights=gain, minlength=G)
    n_rel = np.bincount(gs, weights=ys.astype(np.float64), minlength=G)
    # ideal DCG: n_rel relevant items at ranks 1..min(n_rel, k)
    disc = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(1, k + 1) + 1.0))])
    idcg = disc[np.minimum(n_rel, k).astype(np.int64)]
    hr = np.bincount(gs, weights=(ys & (rank <= k)).astype(np.float64), minlength=G) > 0
    first = np.full(G, np.inf)
    np.minimum.at(first, gs[ys], rank[ys].astype(np.float64))
    keep = n_rel > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        ndcg = dcg / idcg
    return {
        "group": uniq[keep],
        f"hr@{k}": hr[keep].astype(np.float64),
        f"ndcg@{k}": ndcg[keep],
        "mrr": 1.0 / first[keep],
    }


def hit_rate_at_k(groups, labels, scores, k: int) -> float:
    v = ranking_values(groups, labels, scores, k)[f"hr@{k}"]
    return float(v.mean()) if v.size else float("nan")


def ndcg_at_k(groups, labels, scores, k: int) -> float:
    v = ranking_values(groups, labels, scores, k)[f"ndcg@{k}"]
    return float(v.mean()) if v.size else float("nan")


def mrr(groups, labels, scores) -> float:
    v = ranking_values(groups, labels, scores, 1)["mrr"]
    return float(v.mean()) if v.size else float("nan")
