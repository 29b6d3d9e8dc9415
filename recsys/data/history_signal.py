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
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from recsys.data.io import read_table
from recsys.data.schemas import Action


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

    def attention(self, newest: int, tau: float, chunk: int = 8192) -> np.ndarray:
        """sum_j softmax_j(tau * s_j) * s_j over the newest `newest` events, s_j = <event factor, item> (chunked)."""
        cut, out = self._cut(newest), np.zeros(self.end.size)
        for a0 in range(0, out.size, chunk):
            e, c = self.end[a0 : a0 + chunk], cut[a0 : a0 + chunk]
            pos = e[:, None] - 1 - np.arange(newest)[None, :]
            valid = pos >= c[:, None]
            sim = np.einsum("rld,rd->rl", self.hist_f[np.where(valid, pos, 0)], self.item_f[a0 : a0 + chunk])
            z = np.where(valid, tau * sim, -np.inf)
            wgt = np.exp(z - np.where(valid.any(axis=1), z.max(axis=1), 0.0)[:, None])
            out[a0 : a0 + chunk] = (wgt * np.where(valid, sim, 0.0)).sum(axis=1) / np.maximum(wgt.sum(axis=1), 1e-300)
        return out

    def r2(self, *scores: np.ndarray, min_history: int = 0) -> float:
        """R^2 of the true logit on an intercept + the given per-impression scores (rows with enough history)."""
        ok = self.history >= min_history
        y = self.logit[ok]
        X = np.column_stack([np.ones(y.size)] + [s[ok] for s in scores])
        beta = np.linalg.lstsq(X, y, rcond=None)[0]
        return float(1.0 - ((y - X @ beta) ** 2).mean() / max(y.var(), 1e-12))

    def corr(self, score: np.ndarray, min_history: int = 0) -> float:
        ok = self.history >= min_history
        return float(np.corrcoef(score[ok], self.logit[ok])[0, 1])


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
    hist_f = F[it[eng][order]]
    csum = np.vstack([np.zeros((1, F.shape[1])), np.cumsum(hist_f, axis=0)])
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
    h = HistorySignal(recent, np.log(p / (1 - p)), end - first, hist_f, csum, F[it[imp]], end, first)
    if attention_tau is not None:
        h.attention_score = h.attention(recent, attention_tau)
    return h


__all__ = ["HistorySignal", "history_signal"]
