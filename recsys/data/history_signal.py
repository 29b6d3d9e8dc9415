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

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from recsys.data.io import read_table
from recsys.data.schemas import Action


@dataclass
class HistorySignal:
    """Per logged impression: true logit, <mean factor of the newest `recent` events, item>, the same for the older
    events, and the number of engaged events before the impression."""

    recent: int
    logit: np.ndarray
    recent_score: np.ndarray
    older_score: np.ndarray
    whole_score: np.ndarray
    history: np.ndarray
    attention_score: np.ndarray | None = None

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


def history_signal(root: str | Path, recent: int, attention_tau: float | None = None, chunk: int = 8192) -> HistorySignal:
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
    hist_f = F[it[eng][order]]  # engaged events' factors, by (user, ts)
    csum = np.vstack([np.zeros((1, F.shape[1])), np.cumsum(hist_f, axis=0)])
    imp = ~eng
    end = np.searchsorted(key, (u[imp] << 42) | ts[imp], side="left")  # strictly before the impression
    first = np.searchsorted(key, u[imp] << 42, side="left")
    cut = np.maximum(first, end - recent)
    req = read_table(root, "requests", columns=["request_id", "candidate_item_ids"]).column("candidate_item_ids")
    ctr = pq.read_table(root / "truth" / "request_ctr" / "part-0.parquet").column("true_ctr").combine_chunks()
    n_req = len(ctr)
    true_ctr = ctr.flatten().to_numpy().reshape(n_req, -1).astype(np.float64)
    cand = req.combine_chunks().flatten().to_numpy().reshape(n_req, -1)
    rid = ev.column("request_id").to_numpy(zero_copy_only=False)[imp].astype(np.int64)
    col = (cand[rid] == it[imp][:, None]).argmax(axis=1)
    p = true_ctr[rid, col]
    item_f = F[it[imp]]

    def score(start: np.ndarray, stop: np.ndarray) -> np.ndarray:
        mean = (csum[stop] - csum[start]) / np.maximum(stop - start, 1)[:, None]
        return (mean * item_f).sum(axis=1)

    attention = None
    if attention_tau is not None:  # per impression, the newest `recent` events' factors (chunked: rows x recent x d)
        attention = np.zeros(end.size)
        for a0 in range(0, end.size, chunk):
            e, c = end[a0 : a0 + chunk], cut[a0 : a0 + chunk]
            pos = e[:, None] - 1 - np.arange(recent)[None, :]
            valid = pos >= c[:, None]
            sim = np.einsum("rld,rd->rl", hist_f[np.where(valid, pos, 0)], item_f[a0 : a0 + chunk])
            z = np.where(valid, attention_tau * sim, -np.inf)
            wgt = np.exp(z - np.where(valid.any(axis=1), z.max(axis=1), 0.0)[:, None])
            attention[a0 : a0 + chunk] = (wgt * np.where(valid, sim, 0.0)).sum(axis=1) / np.maximum(wgt.sum(axis=1), 1e-300)
    return HistorySignal(recent, np.log(p / (1 - p)), score(cut, end), score(first, cut), score(first, end), end - first, attention)


__all__ = ["HistorySignal", "history_signal"]
