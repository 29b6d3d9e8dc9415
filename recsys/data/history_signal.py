"""How much of the simulator's true click logit each slice of a user's history can explain.

Why: a long-sequence model can only beat a short-window one if events further back than the window carry
information about the click that the window does not. On simulated data that is checkable against truth before any
model is trained: for every logged impression, score the shown item against the mean true factor of (a) the newest
`recent` engaged events before the impression and (b) everything older, and ask how much of the true logit a linear
fit explains with (a) alone and with (a) + (b). If (b) adds nothing, no model can gain from histories longer than
`recent` on that data (up to what a mean misses: multi-modal interests, exact item repeats).

With `attention_tau`, also a candidate-aware score of the newest `recent` events: sum_j softmax_j(tau * s_j) * s_j,
s_j = <factor of event j, item> (tau = 0 gives the mean score; large tau the max). If it explains more of the true
logit than the mean does, which events matter depends on the candidate: target attention (DIN) has something to
find that a pooled history blurs.

`category_share(newest, decay)` is the model-free counterpart of the rankers' category-share cross features, and
`with_geometry(table)` rescores the same rows with another item geometry (category centroids, a trained model's item
embeddings: recsys/data/item_geometry.py), so one can ask how much of the candidate-aware signal survives when items
are only known as well as a model knows them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from recsys.data.io import read_table
from recsys.data.schemas import Action


CATEGORY_SHARE_DECAYS = (0.5, 0.8, 0.95, 1.0)  # the shipped configs' embedding.category_share


@dataclass
class HistorySignal:
    """Per logged impression: true logit, <mean factor of the newest `recent` events, item>, the same for the older
    events, and the number of engaged events before the impression. Holds the engaged events' factors (by user, time)
    so other windows and attention scores come without re-reading the data."""

    recent: int
    logit: np.ndarray
    history: np.ndarray
    hist_f: np.ndarray = field(repr=False)  # engaged events' factors, sorted by (user, ts)
    csum: np.ndarray = field(repr=False)  # prefix sums of hist_f (one leading zero row)
    item_f: np.ndarray = field(repr=False)  # factor of each impression's item
    end: np.ndarray = field(repr=False)  # per impression: index after its newest earlier engaged event
    first: np.ndarray = field(repr=False)  # per impression: index of its user's first engaged event
    hist_item: np.ndarray = field(repr=False)  # item id of each engaged event (order of hist_f)
    imp_item: np.ndarray = field(repr=False)  # item id of each impression
    item_category: np.ndarray = field(repr=False)  # category by item id
    attention_score: np.ndarray | None = None

    def _cut(self, newest: int) -> np.ndarray:
        return np.maximum(self.first, self.end - newest)

    def _mean_score(self, start: np.ndarray, stop: np.ndarray) -> np.ndarray:
        mean = (self.csum[stop] - self.csum[start]) / np.maximum(stop - start, 1)[:, None]
        return (mean * self.item_f).sum(axis=1)

    @property
    def recent_score(self) -> np.ndarray:
        return self.window_score(self.recent)

    @property
    def older_score(self) -> np.ndarray:
        return self._mean_score(self.first, self._cut(self.recent))

    @property
    def whole_score(self) -> np.ndarray:
        return self._mean_score(self.first, self.end)

    def window_score(self, newest: int) -> np.ndarray:
        """<mean factor of the newest `newest` engaged events, item> per impression."""
        return self._mean_score(self._cut(newest), self.end)

    def recency_means(self, newest: int) -> list[np.ndarray]:
        """Window mean scores of the newest 2, 4, 8, ... and `newest` events: least-squares weights on them span the
        recency-weighted means a pooled history can form (the baseline the candidate-aware scores are measured on)."""
        return [self.window_score(2**k) for k in range(1, newest.bit_length()) if 2**k < newest] + [self.window_score(newest)]

    def category_shares(self, newest: int, decays: tuple[float, ...] = CATEGORY_SHARE_DECAYS) -> list[np.ndarray]:
        return [self.category_share(newest, d) for d in decays]

    def _windows(self, newest: int, chunk: int):
        """Chunks of impressions with their newest `newest` engaged events: (slice, event index [r, newest] newest
        first, valid [r, newest])."""
        cut = self._cut(newest)
        for a0 in range(0, self.end.size, chunk):
            sl = slice(a0, a0 + chunk)
            pos = self.end[sl][:, None] - 1 - np.arange(newest)[None, :]
            valid = pos >= cut[sl][:, None]
            yield sl, np.where(valid, pos, 0), valid

    def attention(self, newest: int, tau: float, chunk: int = 8192) -> np.ndarray:
        """sum_j softmax_j(tau * s_j) * s_j over the newest `newest` events, s_j = <event factor, item> (chunked)."""
        out = np.zeros(self.end.size)
        for sl, pos, valid in self._windows(newest, chunk):
            sim = np.einsum("rld,rd->rl", self.hist_f[pos], self.item_f[sl])
            z = np.where(valid, tau * sim, -np.inf)
            wgt = np.exp(z - np.where(valid.any(axis=1), z.max(axis=1), 0.0)[:, None])
            out[sl] = (wgt * np.where(valid, sim, 0.0)).sum(axis=1) / np.maximum(wgt.sum(axis=1), 1e-300)
        return out

    def category_share(self, newest: int, decay: float, chunk: int = 8192) -> np.ndarray:
        """Share of the newest `newest` engaged events in the impression item's category, event j weighted decay**j
        (j = 0 the newest); 0 without history. The rankers' `embedding.category_share` cross feature, model-free."""
        out, w = np.zeros(self.end.size), decay ** np.arange(newest, dtype=np.float64)
        for sl, pos, valid in self._windows(newest, chunk):
            wv = np.where(valid, w[None, :], 0.0)
            same = self.item_category[self.hist_item[pos]] == self.item_category[self.imp_item[sl]][:, None]
            out[sl] = (wv * same).sum(axis=1) / np.maximum(wv.sum(axis=1), 1e-300)
        return out

    def with_geometry(self, table: np.ndarray) -> HistorySignal:
        """The same rows and true logits, every score taken with item vectors table[item id] instead of the true
        factors (the attention score is dropped: recompute it with `attention`)."""
        t = np.asarray(table, dtype=np.float64)
        hist_f = t[self.hist_item]
        return dataclasses.replace(self, hist_f=hist_f, csum=_prefix_sums(hist_f), item_f=t[self.imp_item], attention_score=None)

    def r2(self, *scores: np.ndarray, min_history: int = 0) -> float:
        """R^2 of the true logit on an intercept + the given per-impression scores (rows with enough history)."""
        ok = self.history >= min_history
        return fit_r2(np.column_stack([s[ok] for s in scores]), self.logit[ok])

    def corr(self, score: np.ndarray, min_history: int = 0) -> float:
        ok = self.history >= min_history
        return float(np.corrcoef(score[ok], self.logit[ok])[0, 1])


def _prefix_sums(x: np.ndarray) -> np.ndarray:
    return np.vstack([np.zeros((1, x.shape[1])), np.cumsum(x, axis=0)])


def fit_r2(X: np.ndarray, Y: np.ndarray) -> float:
    """R^2 of the least-squares fit of Y [n] or [n, k] on an intercept + X [n, p]: 1 - SSE / total sum of squares
    (summed over Y's columns)."""
    X1 = np.column_stack([np.ones(len(X)), X])
    resid = Y - X1 @ np.linalg.lstsq(X1, Y, rcond=None)[0]
    return float(1.0 - (resid**2).sum() / max(((Y - Y.mean(axis=0)) ** 2).sum(), 1e-12))


def item_categories(root: str | Path, items: int) -> np.ndarray:
    """Category by item id from a simulator output's items table."""
    tab = read_table(Path(root), "items", columns=["item_id", "category"])
    cat = np.zeros(items, dtype=np.int64)
    cat[tab.column("item_id").to_numpy()] = tab.column("category").to_numpy()
    return cat


def category_means(factors: np.ndarray, categories: np.ndarray) -> np.ndarray:
    """[items, d]: each item's category mean of `factors` (row = item id)."""
    means = np.zeros((int(categories.max()) + 1, factors.shape[1]))
    np.add.at(means, categories, factors)
    return (means / np.maximum(np.bincount(categories, minlength=len(means)), 1)[:, None])[categories]


def category_centroids(root: str | Path) -> np.ndarray:
    """[items, d]: each item's category mean true factor (an item known only by its category)."""
    F = np.load(Path(root) / "truth" / "item_factors.npy").astype(np.float64)
    return category_means(F, item_categories(root, F.shape[0]))


def history_signal(root: str | Path, recent: int, attention_tau: float | None = None) -> HistorySignal:
    """Read a simulator output directory (events, requests, truth/) and score every impression (see module doc)."""
    root = Path(root)
    ev = read_table(root, "events", columns=["ts", "user_id", "item_id", "action", "request_id"])
    F = np.load(root / "truth" / "item_factors.npy").astype(np.float64)
    a, u, it = ev.column("action").to_numpy(), ev.column("user_id").to_numpy(), ev.column("item_id").to_numpy()
    ts = ev.column("ts").cast("int64").to_numpy()
    eng = a != int(Action.IMPRESSION)
    key = (u[eng] << 42) | ts[eng]
    order = np.argsort(key, kind="stable")
    key = key[order]
    hist_item = it[eng][order]
    hist_f = F[hist_item]
    csum = _prefix_sums(hist_f)
    imp = ~eng
    end = np.searchsorted(key, (u[imp] << 42) | ts[imp], side="left")  # strictly before the impression
    first = np.searchsorted(key, u[imp] << 42, side="left")
    req = read_table(root, "requests", columns=["request_id", "candidate_item_ids"]).column("candidate_item_ids")
    ctr = pq.read_table(root / "truth" / "request_ctr" / "part-0.parquet").column("true_ctr").combine_chunks()
    n_req = len(ctr)
    true_ctr = ctr.flatten().to_numpy().reshape(n_req, -1).astype(np.float64)
    cand = req.combine_chunks().flatten().to_numpy().reshape(n_req, -1)
    rid = ev.column("request_id").to_numpy(zero_copy_only=False)[imp].astype(np.int64)
    col = (cand[rid] == it[imp][:, None]).argmax(axis=1)
    p = true_ctr[rid, col]
    h = HistorySignal(recent, np.log(p / (1 - p)), end - first, hist_f, csum, F[it[imp]], end, first, hist_item,
                      it[imp], item_categories(root, F.shape[0]))
    if attention_tau is not None:
        h.attention_score = h.attention(recent, attention_tau)
    return h


__all__ = ["CATEGORY_SHARE_DECAYS", "HistorySignal", "category_centroids", "category_means", "fit_r2", "history_signal", "item_categories"]
