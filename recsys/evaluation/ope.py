"""Off-policy estimators of a target policy's value from logged bandit rounds.

Setting (DESIGN.md data contract): every logged impression is one round i with context x_i (its request: user,
domain, time; and its position), a candidate set A(x_i) (the request's `candidate_item_ids`), the logged action
a_i drawn from the logging policy mu(.|x_i) with propensity p_i = mu(a_i|x_i), and a reward r_i (a reward column,
`label` by default). A target policy pi gives probabilities pi(.|x) over the same candidates. The value of pi is
V(pi) = E_x[ sum_a pi(a|x) E[r|x,a] ].

Candidates are stored flat (CSR): `offsets[j]:offsets[j+1]` are request j's candidates, and every per-candidate
array (target probabilities, reward-model predictions, logging probabilities) is aligned with that flat layout.

Estimators (w_i = pi(a_i|x_i) / p_i, the importance weight; q(x,a) a reward model, DM_i = sum_a pi(a|x_i) q(x_i,a)):
- Replay (Li et al. 2011): keep the rounds where the target's action (sampled from pi, or its argmax) equals the
  logged action; the estimate is the mean reward over kept rounds. Unbiased only for uniformly logged data.
- IPS:   mean( min(w_i, clip) r_i )
- SNIPS: sum( w'_i r_i ) / sum( w'_i )                  (w' = clipped weights)
- DM:    mean( DM_i )
- DR:    mean( DM_i + w'_i (r_i - q(x_i, a_i)) )
- SNDR:  mean( DM_i ) + sum( w'_i (r_i - q_i) ) / sum( w'_i )     (Open Bandit Pipeline's definition)
- Switch-DR (Wang et al. 2017): mean( DM_i + 1[w_i <= tau] w_i (r_i - q_i) ): the importance-weighted correction is
  used only where the raw weight is at most tau; DM alone covers the rest.
Clipping (`clip`, None = off) caps the importance weight at `clip`, i.e. floors the propensity at pi(a|x)/clip;
it trades a little bias for much lower variance when the logging propensities are tiny.

Every estimator returns an `Estimate`: the point value, the per-round value vector (`values`, whose mean equals
the estimate) and the exact per-round `components` with the rule (`kind`) that turns their sums into the estimate
(mean: S0/n; ratio: S0/S1; mean_plus_ratio: S0/n + S1/S2). The bootstrap resamples rows of `components` and applies
the rule per resample, so self-normalised estimators get exact bootstrap replicates, not a linearisation.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Kind = Literal["mean", "ratio", "mean_plus_ratio"]
ESTIMATORS = ("replay", "ips", "snips", "dm", "dr", "sndr", "switch_dr")


def combine(kind: Kind, sums: np.ndarray, n) -> np.ndarray:
    """Estimator value from column sums (last axis = components) over n rows (n may be an array of counts)."""
    sums = np.asarray(sums, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        if kind == "mean":
            return sums[..., 0] / n
        if kind == "ratio":
            return sums[..., 0] / sums[..., 1]
        if kind == "mean_plus_ratio":
            return sums[..., 0] / n + sums[..., 1] / sums[..., 2]
    raise ValueError(f"unknown estimate kind {kind!r}")


@dataclass
class Estimate:
    """A point estimate plus what the bootstrap needs (per-round components and the rule that combines them)."""

    name: str
    value: float
    components: np.ndarray  # (n, k) float64
    kind: Kind = "mean"
    info: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.components.shape[0])

    @property
    def values(self) -> np.ndarray:
        """Per-round value vector with mean(values) == value (self-normalised parts use the full-sample weights)."""
        c = self.components
        if self.kind == "mean":
            return c[:, 0]
        if self.kind == "ratio":
            return c[:, 0] * (self.n / c[:, 1].sum())
        return c[:, 0] + c[:, 1] * (self.n / c[:, 2].sum())


def _estimate(name: str, comps: list[np.ndarray], kind: Kind, **info) -> Estimate:
    c = np.ascontiguousarray(np.stack([np.asarray(x, dtype=np.float64) for x in comps], axis=1))
    value = float(combine(kind, c.sum(axis=0), c.shape[0])) if c.shape[0] else float("nan")
    return Estimate(name=name, value=value, components=c, kind=kind, info=info)


@dataclass
class BanditRounds:
    """Logged rounds over requests' candidate sets (CSR). See the module docstring."""

    offsets: np.ndarray  # (R+1,) int64
    round_request: np.ndarray  # (n,) int64 request index of each round
    action_index: np.ndarray  # (n,) int64 flat index of the logged action into the candidate arrays
    pscore: np.ndarray  # (n,) float64 logging propensity of the logged action
    reward: np.ndarray  # (n,) float64

    def __post_init__(self) -> None:
        self.offsets = np.asarray(self.offsets, dtype=np.int64)
        self.round_request = np.asarray(self.round_request, dtype=np.int64)
        self.action_index = np.asarray(self.action_index, dtype=np.int64)
        self.pscore = np.asarray(self.pscore, dtype=np.float64)
        self.reward = np.asarray(self.reward, dtype=np.float64)
        n = self.round_request.size
        for k in ("action_index", "pscore", "reward"):
            if getattr(self, k).size != n:
                raise ValueError(f"BanditRounds.{k} has {getattr(self, k).size} rows, expected {n}")

    @property
    def n(self) -> int:
        return int(self.round_request.size)

    @property
    def n_requests(self) -> int:
        return int(self.offsets.size - 1)

    @property
    def n_candidates(self) -> int:
        return int(self.offsets[-1])

    def candidate_request(self) -> np.ndarray:
        """Request index of every flat candidate."""
        return np.repeat(np.arange(self.n_requests, dtype=np.int64), np.diff(self.offsets))

    def subset(self, mask: np.ndarray) -> "BanditRounds":
        """The same requests, only the rounds where mask is True (e.g. one domain)."""
        return BanditRounds(self.offsets, self.round_request[mask], self.action_index[mask], self.pscore[mask], self.reward[mask])


def segment_sum(flat: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Sum of each request's slice of a flat per-candidate array (empty requests give 0)."""
    flat = np.asarray(flat, dtype=np.float64)
    cs = np.concatenate([[0.0], np.cumsum(flat)])
    return cs[offsets[1:]] - cs[offsets[:-1]]


def importance_weights(data: BanditRounds, target: np.ndarray) -> np.ndarray:
    return np.asarray(target, dtype=np.float64)[data.action_index] / data.pscore


def _clipped(w: np.ndarray, clip: float | None) -> np.ndarray:
    return w if clip is None else np.minimum(w, clip)


def direct_values(data: BanditRounds, target: np.ndarray, qhat: np.ndarray) -> np.ndarray:
    """DM_i = sum_a pi(a|x_i) q(x_i, a) for every round (computed once per request, gathered per round)."""
    per_request = segment_sum(np.asarray(target, dtype=np.float64) * np.asarray(qhat, dtype=np.float64), data.offsets)
    return per_request[data.round_request]


def replay(
    data: BanditRounds, target: np.ndarray, mode: Literal["sample", "argmax"] = "sample", seed: int = 0
) -> Estimate:
    """Li et al. (2011): mean reward over rounds where the target's action equals the logged action."""
    target = np.asarray(target, dtype=np.float64)
    offsets = data.offsets
    req = data.round_request
    if mode == "argmax":
        # first maximum of each request's probabilities (sorted by request, then descending probability, stably:
        # request j's run starts at offsets[j] in that order)
        cand_req = data.candidate_request()
        order = np.lexsort((np.arange(target.size), -target, cand_req))
        nonempty = np.flatnonzero(np.diff(offsets) > 0)
        chosen = np.full(data.n_requests, -1, dtype=np.int64)
        chosen[nonempty] = order[offsets[nonempty]]
        picked = chosen[req]
    else:
        # inverse-CDF sampling of one action per round from pi(.|x_i)
        rng = np.random.default_rng(seed)
        u = rng.random(data.n)
        cs = np.cumsum(target)
        base = np.concatenate([[0.0], cs])[offsets[req]]
        tot = np.concatenate([[0.0], cs])[offsets[req + 1]] - base
        picked = np.searchsorted(cs, base + u * tot, side="right")
        picked = np.minimum(np.maximum(picked, offsets[req]), offsets[req + 1] - 1)
    match = (picked == data.action_index).astype(np.float64)
    return _estimate("replay", [match * data.reward, match], "ratio", matched=int(match.sum()), mode=mode)


def ips(data: BanditRounds, target: np.ndarray, clip: float | None = None) -> Estimate:
    w = _clipped(importance_weights(data, target), clip)
    return _estimate("ips", [w * data.reward], "mean")


def snips(data: BanditRounds, target: np.ndarray, clip: float | None = None) -> Estimate:
    w = _clipped(importance_weights(data, target), clip)
    return _estimate("snips", [w * data.reward, w], "ratio")


def dm(data: BanditRounds, target: np.ndarray, qhat: np.ndarray) -> Estimate:
    return _estimate("dm", [direct_values(data, target, qhat)], "mean")


def dr(data: BanditRounds, target: np.ndarray, qhat: np.ndarray, clip: float | None = None) -> Estimate:
    w = _clipped(importance_weights(data, target), clip)
    q_a = np.asarray(qhat, dtype=np.float64)[data.action_index]
    return _estimate("dr", [direct_values(data, target, qhat) + w * (data.reward - q_a)], "mean")


def sndr(data: BanditRounds, target: np.ndarray, qhat: np.ndarray, clip: float | None = None) -> Estimate:
    w = _clipped(importance_weights(data, target), clip)
    q_a = np.asarray(qhat, dtype=np.float64)[data.action_index]
    return _estimate("sndr", [direct_values(data, target, qhat), w * (data.reward - q_a), w], "mean_plus_ratio")


def switch_dr(data: BanditRounds, target: np.ndarray, qhat: np.ndarray, tau: float) -> Estimate:
    w = importance_weights(data, target)
    q_a = np.asarray(qhat, dtype=np.float64)[data.action_index]
    keep = w <= tau
    v = direct_values(data, target, qhat) + np.where(keep, w * (data.reward - q_a), 0.0)
    return _estimate("switch_dr", [v], "mean", tau=tau, switched=int((~keep).sum()))


def estimate_all(
    data: BanditRounds,
    target: np.ndarray,
    qhat: np.ndarray | None,
    estimators: tuple[str, ...] | list[str] = ESTIMATORS,
    clip: float | None = None,
    switch_tau: float = 10.0,
    replay_mode: Literal["sample", "argmax"] = "sample",
    seed: int = 0,
) -> dict[str, Estimate]:
    """Every requested estimator of one target policy (model-based ones need `qhat`)."""
    out: dict[str, Estimate] = {}
    for name in estimators:
        if name == "replay":
            out[name] = replay(data, target, replay_mode, seed)
        elif name == "ips":
            out[name] = ips(data, target, clip)
        elif name == "snips":
            out[name] = snips(data, target, clip)
        elif name in ("dm", "dr", "sndr", "switch_dr"):
            if qhat is None:
                raise ValueError(f"estimator '{name}' needs a reward model (qhat)")
            if name == "dm":
                out[name] = dm(data, target, qhat)
            elif name == "dr":
                out[name] = dr(data, target, qhat, clip)
            elif name == "sndr":
                out[name] = sndr(data, target, qhat, clip)
            else:
                out[name] = switch_dr(data, target, qhat, switch_tau)
        else:
            raise ValueError(f"unknown estimator {name!r} (known: {', '.join(ESTIMATORS)})")
    return out


def true_value(data: BanditRounds, target: np.ndarray, true_ctr: np.ndarray) -> float:
    """Ground-truth value of pi on these rounds' contexts: mean_i sum_a pi(a|x_i) ctr(x_i, a)."""
    return float(direct_values(data, target, true_ctr).mean())


def fit_item_reward_model(
    data: BanditRounds,
    cand_item: np.ndarray,
    cand_bucket: np.ndarray,
    shrinkage: float = 20.0,
    folds: int = 2,
    seed: int = 0,
) -> np.ndarray:
    """q(x, a) for every flat candidate: a ridge-shrunk mean reward per (context bucket, item), cross-fitted.

    q(b, a) = (sum of rewards of (b, a) + shrinkage * m_b) / (impressions of (b, a) + shrinkage), where m_b is the
    bucket's mean reward: the ridge solution of a one-hot (bucket, item) regression centred on the bucket mean.
    The bucket is the context's coarse key (the request's domain in the pipeline). Cross-fitting (`folds` >= 2, by
    request): a request's predictions come from a model fitted on the other folds' rounds, so the DR correction
    never reuses a round's own reward (keeps DR's bias and interval honest).
    """
    cand_item = np.asarray(cand_item, dtype=np.int64)
    cand_bucket = np.asarray(cand_bucket, dtype=np.int64)
    # one int64 key per (bucket, item): dense item codes so the packed key cannot overflow
    items, item_code = np.unique(cand_item, return_inverse=True)
    b_vals, b_code = np.unique(cand_bucket, return_inverse=True)
    uniq, inv_c = np.unique(b_code.reshape(-1).astype(np.int64) * items.size + item_code.reshape(-1), return_inverse=True)
    inv_c = inv_c.reshape(-1)
    inv_r = inv_c[data.action_index]
    K = uniq.size
    buckets, b_inv = np.unique(uniq // items.size, return_inverse=True)
    b_inv = b_inv.reshape(-1)
    r = data.reward
    folds = max(int(folds), 1)
    req_fold = np.random.default_rng(seed).integers(0, folds, data.n_requests) if folds > 1 else np.zeros(data.n_requests, np.int64)
    round_fold = req_fold[data.round_request]
    tot_n = np.bincount(inv_r, minlength=K).astype(np.float64)
    tot_r = np.bincount(inv_r, weights=r, minlength=K)
    q = np.empty(cand_item.size, dtype=np.float64)
    cand_fold = req_fold[data.candidate_request()]
    for f in range(folds):
        if folds > 1:
            m = round_fold == f
            n_k = tot_n - np.bincount(inv_r[m], minlength=K)
            r_k = tot_r - np.bincount(inv_r[m], weights=r[m], minlength=K)
        else:
            n_k, r_k = tot_n, tot_r
        bn = np.bincount(b_inv, weights=n_k, minlength=buckets.size)
        br = np.bincount(b_inv, weights=r_k, minlength=buckets.size)
        glob = r_k.sum() / max(n_k.sum(), 1.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mb = np.where(bn > 0, br / bn, glob)
        qk = (r_k + shrinkage * mb[b_inv]) / (n_k + shrinkage)
        sel = cand_fold == f
        q[sel] = qk[inv_c[sel]]
    return q
