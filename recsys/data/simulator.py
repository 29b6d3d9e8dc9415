"""A synthetic multi-domain platform with known ground truth, written in the parquet data contract.

Why: quality metrics and off-policy estimates can only be checked against truth. This simulator draws every event
from a known generative model and saves that model beside the data (DIR/truth), so a replay can compare an
estimate of a policy's CTR with its true value.

Generative model (time advances in slots of 24/`slots_per_day` hours; everything inside a slot is vectorised
over all users; only the slot loop is Python):
- Items: unit factor v_i = normalise(category centroid + noise), a category, a home domain, a popularity weight
  (Zipf over a random rank, or lognormal), and created_ts. A fraction of the catalogue exists at the start; the rest
  arrives uniformly over the period and is only eligible (browsed or shown) from the first slot that starts after
  its creation. New items get a decaying freshness boost in exposure.
- Users: a long-term taste l_u that drifts every slot (random walk of size `drift_rate` per day), a short-term
  interest h_u = exponential moving average of the factors of the items the user engaged with (so recent clicks
  predict future clicks: this is what sequence models can learn and pooled histories blur), and topic switches
  (h_u jumps to a random category with probability `topic_switch_prob` per slot). The current interest is
  s_u = normalise(long_weight * l_u + (1 - long_weight) * h_u). Returning interests (off by default,
  `personal_topics` > 0): each user holds that many fixed personal topics (a category centroid plus a user-specific
  offset, drawn once, Dirichlet weights) and a topic switch returns to one of them with probability
  `topic_return_prob` (else a random category as above): MIND/ComiRec's multi-interest users, the long-term
  interests LONGER and LMN read long histories for. Measured (benchmarks/bench_long_range.py): with 4 topics the
  newest ~64 events already show them; only a stable, heavily weighted long-term taste (`drift_rate` 0.03,
  `long_weight` 0.5) leaves click signal further back. Concurrent interests (off by default, `concurrent_topics`):
  the user holds all personal topics at once, and every affinity (browsing, retrieval, the click model) is the max
  over {s_u, normalise(long_weight * l_u + (1 - long_weight) * topic_m)}: which part of the history matters depends
  on the candidate (DIN's premise; a mean of the history blurs it). Measured (bench_long_range): a candidate-aware
  attention score of the newest 64 events adds R^2 0.20 of the true logit to the best recency-weighted mean of them
  (0.08-0.10 in the other settings), and the events before the newest 64 add 0.012. Activity (events/day) is
  lognormal; a `heavy_user_fraction` of users (at least `min_heavy_users`) make ~`heavy_user_events` organic events
  over the period, so sequences of thousands of events occur. Each user has a Dirichlet preference over domains.
- Domains: a per-domain diagonal transform W_k of the factor space and a per-domain CTR bias b_k, so the same user
  and item have a different affinity in each domain (per-domain models matter), plus a home-domain exposure boost.
- Organic events (most of the history): the user browses: `browse_pool` items are drawn by exposure weight and one
  is chosen by a softmax of affinity / `browse_temperature` (Gumbel-max). Each browse is a CLICK; it is followed
  by LIKE / SHARE / PURCHASE events on the same item with probabilities `action_probs` scaled by the user's affinity.
- Requests: `requests_per_user_day` (scaled by activity^`request_activity_power`) requests per user and day. A request
  in domain k gets `candidates` distinct eligible items (the top by a noisy retrieval score among a pool drawn by
  exposure weight). True click probability of candidate i (independent of position):
      true_ctr = sigmoid(affinity_scale * <s_u * W_k, v_i> + pop_ctr_weight * z_i + b_k + offset)
  where z_i is the standardised log popularity and `offset` is calibrated so that the mean CTR of logged
  impressions is `target_ctr`. The logging policy scores candidates with the true logit plus Gaussian noise
  (`policy_noise`), takes a softmax at `policy_temperature` and mixes it with epsilon-uniform (`policy_epsilon`), so
  every candidate has probability > 0. Each of the `slate_size` positions draws its item independently from those
  probabilities (propensity = probability of the drawn item); label ~ Bernoulli(true_ctr). A CLICK event follows
  each clicked impression 1 ms .. `click_delay_max_ms` later (like every non-impression event it carries no
  request_id/position/label/policy/propensity). Clicked impressions update h_u like organic clicks.
  Request ids increase with (ts, user_id); the impressions of one request share its ts and are ordered by position.
Ground truth in DIR/truth: request_ctr/part-0.parquet (request_id, true_ctr aligned with candidate_item_ids),
user_factors.npy (l_u at the start), user_factors_by_day.npy (l_u at each day start), item_factors.npy,
item_popularity.npy, category_centroids.npy, domain_transform.npy, domain_bias.npy, user_activity.npy,
user_domain_probs.npy (all indexed by id) and meta.json (the formula and every calibrated constant).
Determinism: one numpy Generator seeded by `seed`, consumed in a fixed order -> byte-identical parquet per seed.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field, model_validator

from recsys.config import StrictModel
from recsys.data.io import prepare_output_dir, write_table
from recsys.data.schemas import Action, TS

DAY_MS = 86_400_000
POLICY_NAME = "logging"


class ActionProbs(StrictModel):
    """Probability that an organic click is followed by each deeper action (at average affinity)."""

    like: float = Field(0.10, ge=0, le=1)
    share: float = Field(0.02, ge=0, le=1)
    purchase: float = Field(0.03, ge=0, le=1)


class SimulatorConfig(StrictModel):
    """Every knob of the simulator (see the module docstring for what each one drives)."""

    users: int = Field(2000, ge=1)
    items: int = Field(5000, ge=1)
    days: int = Field(7, ge=1)
    domains: int = Field(3, ge=1, le=64)
    seed: int = Field(0, ge=0)
    start_date: dt.date = dt.date(2024, 1, 1)
    slots_per_day: int = Field(24, ge=1, le=1440)
    # latent space
    factor_dim: int = Field(16, ge=2)
    categories: int = Field(64, ge=1)
    item_noise: float = Field(0.6, ge=0, description="spread of item factors around their category centroid")
    home_domain_prob: float = Field(0.8, ge=0, le=1, description="P(item's domain = its category's domain)")
    # popularity
    popularity: Literal["zipf", "lognormal"] = "zipf"
    zipf_exponent: float = Field(1.0, gt=0)
    lognormal_sigma: float = Field(1.5, gt=0)
    domain_boost: float = Field(6.0, ge=1, description="exposure multiplier for items of the request's domain")
    # new items
    new_item_fraction: float = Field(0.3, ge=0, lt=1, description="share of the catalogue created during the period")
    fresh_boost: float = Field(3.0, ge=0, description="extra exposure of a brand-new item (decays)")
    fresh_decay_days: float = Field(1.0, gt=0)
    # user dynamics
    drift_rate: float = Field(0.3, ge=0, description="random-walk step of the long-term taste per day")
    long_weight: float = Field(0.3, ge=0, le=1, description="weight of long-term taste vs recent interest")
    interest_update_rate: float = Field(0.15, gt=0, le=1, description="EMA step per engaged item")
    topic_switch_prob: float = Field(0.05, ge=0, le=1, description="per-slot probability of a new short-term topic")
    personal_topics: int = Field(0, ge=0, description="fixed topics a user returns to (0 = switches go to random categories)")
    topic_return_prob: float = Field(0.8, ge=0, le=1, description="P(a topic switch returns to a personal topic)")
    personal_topic_concentration: float = Field(1.0, gt=0, description="Dirichlet alpha of the personal topics' weights")
    concurrent_topics: bool = Field(False, description="users hold all personal topics at once: affinity = max over them")
    # activity
    events_per_user_day: float = Field(18.0, gt=0, description="median organic browse events per user and day")
    activity_sigma: float = Field(1.0, ge=0, description="lognormal spread of user activity")
    heavy_user_fraction: float = Field(0.005, ge=0, le=1)
    min_heavy_users: int = Field(3, ge=0)
    heavy_user_events: float = Field(3000.0, gt=0, description="organic events of a heavy user over the period")
    domain_concentration: float = Field(1.0, gt=0, description="Dirichlet alpha of users' domain preferences")
    diurnal_amplitude: float = Field(0.5, ge=0, lt=1)
    warmup_days: float = Field(1.0, ge=0, description="organic dynamics run before the start (not written)")
    # organic behaviour
    browse_pool: int = Field(16, ge=1)
    browse_temperature: float = Field(0.5, gt=0)
    action_probs: ActionProbs = ActionProbs()
    # requests and the logging policy
    requests_per_user_day: float = Field(2.0, ge=0)
    request_activity_power: float = Field(0.5, ge=0, le=1)
    candidates: int = Field(50, ge=1)
    candidate_pool_factor: int = Field(4, ge=1, description="pool drawn per request = factor * candidates")
    retrieval_noise: float = Field(1.0, ge=0)
    slate_size: int = Field(4, ge=1)
    policy_temperature: float = Field(1.0, gt=0)
    policy_noise: float = Field(0.5, ge=0)
    policy_epsilon: float = Field(0.1, gt=0, le=1)
    # click model
    affinity_scale: float = Field(3.0, ge=0)
    pop_ctr_weight: float = Field(0.3)
    domain_bias_std: float = Field(0.4, ge=0)
    domain_transform_std: float = Field(0.5, ge=0)
    target_ctr: float = Field(0.05, gt=0, lt=1)
    click_delay_max_ms: int = Field(30_000, ge=1)
    # output
    compression: Literal["lz4", "zstd", "snappy", "gzip", "none"] = "lz4"

    @model_validator(mode="after")
    def _concurrent_needs_topics(self) -> "SimulatorConfig":
        if self.concurrent_topics and not self.personal_topics:
            raise ValueError("concurrent_topics needs personal_topics > 0 (the topics a user holds at once)")
        return self

    @model_validator(mode="after")
    def _enough_items(self) -> "SimulatorConfig":
        initial = self.items - int(round(self.items * self.new_item_fraction))
        if initial < self.candidates:
            raise ValueError(
                f"items * (1 - new_item_fraction) = {initial} items exist at the start, fewer than "
                f"candidates = {self.candidates}: raise items or lower candidates"
            )
        return self


def _normalise(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _categorical_rows(rng: np.random.Generator, cum: np.ndarray) -> np.ndarray:
    """One draw per row from rows of cumulative probabilities (last column = 1)."""
    u = rng.random(cum.shape[0])[:, None]
    return np.minimum((u > cum).sum(axis=1), cum.shape[1] - 1)


class _World:
    """The static part of the ground truth: items, users' traits, domains."""

    def __init__(self, cfg: SimulatorConfig, rng: np.random.Generator) -> None:
        U, I, K, d, C = cfg.users, cfg.items, cfg.domains, cfg.factor_dim, cfg.categories
        self.start_ms = int(dt.datetime.combine(cfg.start_date, dt.time(), tzinfo=dt.timezone.utc).timestamp() * 1000)
        self.period_ms = cfg.days * DAY_MS
        # categories and items (internal index = creation order; public item_id = a random permutation of it)
        self.centroids = _normalise(rng.standard_normal((C, d)))
        cat_domain = rng.integers(0, K, C)
        self.item_cat = rng.integers(0, C, I)
        home = rng.random(I) < cfg.home_domain_prob
        self.item_domain = np.where(home, cat_domain[self.item_cat], rng.integers(0, K, I)).astype(np.int32)
        self.item_f = _normalise(self.centroids[self.item_cat] + cfg.item_noise / math.sqrt(d) * rng.standard_normal((I, d)))
        if cfg.popularity == "zipf":
            rank = rng.permutation(I) + 1
            self.pop = rank.astype(np.float64) ** (-cfg.zipf_exponent)
        else:
            self.pop = np.exp(cfg.lognormal_sigma * rng.standard_normal(I))
        self.pop /= self.pop.sum()
        logp = np.log(self.pop)
        self.pop_z = (logp - logp.mean()) / max(logp.std(), 1e-12)
        n_new = int(round(I * cfg.new_item_fraction))
        n_init = I - n_new
        init_created = self.start_ms - rng.integers(DAY_MS, 30 * DAY_MS, n_init)
        new_created = np.sort(rng.integers(self.start_ms, self.start_ms + self.period_ms, n_new))
        self.item_f32 = self.item_f.astype(np.float32)  # the hot gather in _affinity moves half the bytes
        self.created = np.concatenate([np.sort(init_created), new_created]).astype(np.int64)
        self.item_id = rng.permutation(I).astype(np.int64)  # public id of internal index
        # domains
        self.domain_w = np.exp(cfg.domain_transform_std * rng.standard_normal((K, d)))
        self.domain_w /= np.sqrt((self.domain_w**2).mean(axis=1, keepdims=True))
        self.domain_b = cfg.domain_bias_std * rng.standard_normal(K)
        # users
        self.long = _normalise(rng.standard_normal((U, d)))
        self.short = self.near_centroids(rng, rng.integers(0, C, U))
        self.activity = cfg.events_per_user_day * np.exp(cfg.activity_sigma * rng.standard_normal(U) - 0.0)
        n_heavy = min(U, max(cfg.min_heavy_users, int(round(cfg.heavy_user_fraction * U))))
        self.heavy = np.zeros(U, dtype=bool)
        self.heavy[rng.choice(U, n_heavy, replace=False)] = True
        heavy_rate = cfg.heavy_user_events / cfg.days * np.exp(0.2 * rng.standard_normal(U))
        self.activity = np.where(self.heavy, np.maximum(heavy_rate, self.activity), self.activity)
        self.domain_p = rng.dirichlet(np.full(K, cfg.domain_concentration), U)
        self.domain_cum = np.cumsum(self.domain_p, axis=1)
        self.domain_cum[:, -1] = 1.0
        mean_act = self.activity.mean()
        self.req_rate = cfg.requests_per_user_day * (self.activity / mean_act) ** cfg.request_activity_power
        self.offset = 0.0
        if cfg.personal_topics:  # drawn last: with personal_topics = 0 the stream (and the data) is unchanged
            M = cfg.personal_topics
            self.topic_cat = np.argsort(rng.random((U, C)), axis=1)[:, :M] if M <= C else rng.integers(0, C, (U, M))
            self.topics = self.near_centroids(rng, self.topic_cat)
            self.topic_cum = np.cumsum(rng.dirichlet(np.full(M, cfg.personal_topic_concentration), U), axis=1)
            self.topic_cum[:, -1] = 1.0
            self.short = self.topics[np.arange(U), _categorical_rows(rng, self.topic_cum)]

    def near_centroids(self, rng: np.random.Generator, cats: np.ndarray) -> np.ndarray:
        """Unit interests around the given categories' centroids: the one spread every short-term topic is drawn with."""
        d = self.centroids.shape[1]
        return _normalise(self.centroids[cats] + 0.3 * rng.standard_normal(cats.shape + (d,)) / math.sqrt(d))

    def new_topics(self, cfg: SimulatorConfig, rng: np.random.Generator, users: np.ndarray) -> np.ndarray:
        """Short-term interest after a topic switch of `users`: a random category, or a personal topic."""
        fresh = self.near_centroids(rng, rng.integers(0, cfg.categories, users.size))
        if not cfg.personal_topics:
            return fresh
        back = rng.random(users.size) < cfg.topic_return_prob
        mine = self.topics[users, _categorical_rows(rng, self.topic_cum[users])]
        return np.where(back[:, None], mine, fresh)

    def interest(self, cfg: SimulatorConfig) -> np.ndarray:
        """[U, d] current interest, or [U, 1 + M, d] (current + each personal topic) with concurrent topics."""
        s = _normalise(cfg.long_weight * self.long + (1 - cfg.long_weight) * self.short)
        if not cfg.concurrent_topics:
            return s
        held = _normalise(cfg.long_weight * self.long[:, None] + (1 - cfg.long_weight) * self.topics)
        return np.concatenate([s[:, None], held], axis=1)


class _Exposure:
    """Per-slot exposure weights of the eligible items (a prefix in creation order), one cumulative array per domain.

    Sampling uses a guide table (indexed search): guide[j] = first item whose cumulative weight exceeds j/n, so a
    draw u starts at guide[floor(u*n)] and steps forward (expected < 2 steps). It returns exactly what
    searchsorted(cum, u, side="right") returns, but without a branchy binary search per draw (~3x faster).
    """

    def __init__(self, cfg: SimulatorConfig, w: _World, t_ms: int) -> None:
        n = int(np.searchsorted(w.created, t_ms, side="right"))
        self.n = n
        age_days = (t_ms - w.created[:n]) / DAY_MS
        base = w.pop[:n] * (1.0 + cfg.fresh_boost * np.exp(-age_days / cfg.fresh_decay_days))
        self.cum = np.empty((cfg.domains, n))
        self.guide = np.empty((cfg.domains, n), dtype=np.int64)
        grid = np.arange(n) / n
        for k in range(cfg.domains):
            wk = base * np.where(w.item_domain[:n] == k, cfg.domain_boost, 1.0)
            c = np.cumsum(wk)
            self.cum[k] = c / c[-1]
            self.cum[k, -1] = 1.0
            self.guide[k] = np.minimum(np.searchsorted(self.cum[k], grid, side="right"), n - 1)

    def draw(self, rng: np.random.Generator, domain: np.ndarray, size: int) -> np.ndarray:
        """[len(domain), size] internal item indices, drawn with replacement by exposure weight of each row's domain."""
        u = rng.random((domain.shape[0], size))
        out = np.empty(u.shape, dtype=np.int64)
        for k in np.unique(domain):
            rows = domain == k
            uk = u[rows].reshape(-1)
            cum = self.cum[k]
            idx = self.guide[k][np.minimum((uk * self.n).astype(np.int64), self.n - 1)]
            act = np.flatnonzero(cum[idx] <= uk)
            while act.size:  # cum[n-1] == 1 > u, so every walk stops inside the array
                idx[act] += 1
                act = act[cum[idx[act]] <= uk[act]]
            out[rows] = idx.reshape(-1, size)
        return out


def _affinity(w: _World, s: np.ndarray, domain: np.ndarray, items: np.ndarray) -> np.ndarray:
    """<s * W_k, v_i> for rows (s, domain) against [rows, m] item indices; the max over interests for [rows, n, d] s."""
    if s.ndim == 3:
        q = (s * w.domain_w[domain][:, None]).astype(np.float32)
        return np.einsum("rnd,rmd->rnm", q, w.item_f32[items], optimize=False).max(axis=1).astype(np.float64)
    q = (s * w.domain_w[domain]).astype(np.float32)
    return np.einsum("rd,rmd->rm", q, w.item_f32[items], optimize=False).astype(np.float64)


def _candidates(cfg: SimulatorConfig, rng: np.random.Generator, exp: _Exposure, retr: np.ndarray, users_s, domain, w) -> np.ndarray:
    """[R, C] distinct eligible items per request: the top-C by noisy retrieval score of a deduplicated pool."""
    R, C = domain.shape[0], cfg.candidates
    out = np.empty((R, C), dtype=np.int64)
    todo = np.arange(R)
    pool_size = max(C, cfg.candidate_pool_factor * C)
    for attempt in range(4):
        if todo.size == 0:
            return out
        pool = np.sort(exp.draw(rng, domain[todo], pool_size), axis=1)
        dup = np.zeros(pool.shape, dtype=bool)
        dup[:, 1:] = pool[:, 1:] == pool[:, :-1]
        score = _affinity(w, users_s[todo], domain[todo], pool) + retr * rng.standard_normal(pool.shape)
        score[dup] = -np.inf
        ok = (~dup).sum(axis=1) >= C
        top = np.argpartition(-score[ok], C - 1, axis=1)[:, :C]
        out[todo[ok]] = np.take_along_axis(pool[ok], top, axis=1)
        todo = todo[~ok]
    if todo.size:  # pathological (tiny eligible set): a random permutation of the eligible items is always distinct
        keys = rng.random((todo.size, exp.n))
        out[todo] = np.argpartition(keys, C - 1, axis=1)[:, :C]
    return out


def _diurnal(cfg: SimulatorConfig, slot: int) -> float:
    """Activity multiplier of a slot of the day (mean 1, low at night)."""
    return 1.0 + cfg.diurnal_amplitude * math.sin(2 * math.pi * (slot + 0.5) / cfg.slots_per_day - math.pi / 2)


def _browse(cfg: SimulatorConfig, rng: np.random.Generator, w: _World, exp: _Exposure, s: np.ndarray, diurnal: float):
    """One slot of organic browsing for all users: (user, domain, internal item, affinity) per browse event."""
    n_ev = rng.poisson(w.activity * diurnal / cfg.slots_per_day)
    bu = np.repeat(np.arange(cfg.users), n_ev)
    if not bu.size:
        e = np.zeros(0, np.int64)
        return e, e, e, np.zeros(0)
    bdom = _categorical_rows(rng, w.domain_cum[bu])
    pool = exp.draw(rng, bdom, cfg.browse_pool)
    aff = _affinity(w, s[bu], bdom, pool)
    g = aff * (cfg.affinity_scale / cfg.browse_temperature) - np.log(-np.log(rng.random(pool.shape)))
    pick = np.argmax(g, axis=1)
    rows = np.arange(bu.size)
    return bu, bdom, pool[rows, pick], aff[rows, pick]


def _update_state(cfg: SimulatorConfig, rng: np.random.Generator, w: _World, users: np.ndarray, items: np.ndarray, drift_step: float) -> None:
    """End of a slot: short-term interest moves toward engaged items (EMA), topic switches, long-term drift."""
    U = cfg.users
    cnt = np.bincount(users, minlength=U).astype(np.float64)
    act = cnt > 0
    if act.any():
        f = w.item_f[items]
        mean_f = np.stack([np.bincount(users, weights=f[:, j], minlength=U) for j in range(cfg.factor_dim)], axis=1)[act]
        mean_f /= cnt[act][:, None]
        beta = (1.0 - (1.0 - cfg.interest_update_rate) ** cnt[act])[:, None]
        w.short[act] = _normalise((1 - beta) * w.short[act] + beta * mean_f)
    switch = rng.random(U) < cfg.topic_switch_prob
    if switch.any():
        w.short[switch] = w.new_topics(cfg, rng, np.flatnonzero(switch))
    w.long = _normalise(w.long + drift_step * rng.standard_normal(w.long.shape))


def _calibrate_offset(cfg: SimulatorConfig, w: _World, rng: np.random.Generator) -> float:
    """Find `offset` so that the mean true CTR of impressions drawn by the logging policy equals target_ctr."""
    exp = _Exposure(cfg, w, w.start_ms)
    n = min(4000, max(200, cfg.users * 2))
    users = rng.choice(cfg.users, n, p=w.req_rate / w.req_rate.sum()) if w.req_rate.sum() > 0 else rng.integers(0, cfg.users, n)
    domain = _categorical_rows(rng, w.domain_cum[users]).astype(np.int64)
    s = w.interest(cfg)[users]
    cand = _candidates(cfg, rng, exp, cfg.retrieval_noise, s, domain, w)
    base = cfg.affinity_scale * _affinity(w, s, domain, cand) + cfg.pop_ctr_weight * w.pop_z[cand] + w.domain_b[domain][:, None]
    probs = _policy_probs(cfg, base + cfg.policy_noise * rng.standard_normal(base.shape))
    lo, hi = -20.0, 20.0
    for _ in range(60):
        mid = (lo + hi) / 2
        ctr = float((probs * _sigmoid(base + mid)).sum(axis=1).mean())
        lo, hi = (mid, hi) if ctr < cfg.target_ctr else (lo, mid)
    return (lo + hi) / 2


def _policy_probs(cfg: SimulatorConfig, score: np.ndarray) -> np.ndarray:
    z = score / cfg.policy_temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    soft = e / e.sum(axis=1, keepdims=True)
    return (1 - cfg.policy_epsilon) * soft + cfg.policy_epsilon / score.shape[1]


def simulate(cfg: SimulatorConfig, out_dir: str | Path) -> dict[str, Any]:
    """Simulate `cfg.days` days and write events, requests, items, users, truth and meta.json under out_dir."""
    t_start = time.perf_counter()
    out = Path(out_dir)
    prepare_output_dir(out, "meta.json", ("events", "requests", "items", "users", "truth"))
    rng = np.random.Generator(np.random.PCG64(cfg.seed))
    w = _World(cfg, rng)
    U, S = cfg.users, cfg.slots_per_day
    slot_ms = DAY_MS // S
    drift_step = cfg.drift_rate / math.sqrt(S) / math.sqrt(cfg.factor_dim)
    # warm-up: run the organic dynamics (nothing written) so interests are in their steady state, then calibrate
    n_warm = int(round(cfg.warmup_days * S))
    for k in range(n_warm):
        t0 = w.start_ms - (n_warm - k) * slot_ms
        bu, _, bi, _ = _browse(cfg, rng, w, _Exposure(cfg, w, t0), w.interest(cfg), _diurnal(cfg, k % S))
        _update_state(cfg, rng, w, bu, bi, drift_step)
    w.offset = _calibrate_offset(cfg, w, rng)
    truth = out / "truth"
    (truth / "request_ctr").mkdir(parents=True, exist_ok=True)
    ctr_schema = pa.schema([pa.field("request_id", pa.int64(), nullable=False), pa.field("true_ctr", pa.list_(pa.float32()), nullable=False)])
    ctr_writer = pq.ParquetWriter(truth / "request_ctr" / "part-0.parquet", ctr_schema, compression=cfg.compression)
    long_by_day = np.empty((cfg.days, U, cfg.factor_dim), dtype=np.float32)
    long_start = w.long.astype(np.float32).copy()
    counts = {"events": 0, "requests": 0, "impressions": 0, "clicks_on_impressions": 0}
    action_counts = np.zeros(len(Action), dtype=np.int64)
    events_per_user = np.zeros(U, dtype=np.int64)  # non-impression events (the engagement history)
    all_per_user = np.zeros(U, dtype=np.int64)
    ctr_sum = 0.0
    next_request_id = 0
    carry: dict[str, np.ndarray] | None = None  # events that spill past midnight (click delays)
    ap = cfg.action_probs
    deep = [(Action.LIKE, ap.like), (Action.SHARE, ap.share), (Action.PURCHASE, ap.purchase)]

    try:
        for day in range(cfg.days):
            long_by_day[day] = w.long
            ev: dict[str, list[np.ndarray]] = {k: [] for k in ("ts", "user", "item", "domain", "action", "rid", "pos", "label", "prop")}
            rq: dict[str, list[np.ndarray]] = {k: [] for k in ("rid", "ts", "user", "domain", "cand", "probs", "ctr")}

            def add_events(ts, user, item, domain, action, rid=None, pos=None, label=None, prop=None):
                n = ts.shape[0]
                ev["ts"].append(ts)
                ev["user"].append(user)
                ev["item"].append(item)
                ev["domain"].append(domain.astype(np.int32))
                ev["action"].append(np.full(n, action, np.int8) if np.isscalar(action) else action.astype(np.int8))
                ev["rid"].append(rid if rid is not None else np.full(n, -1, np.int64))
                ev["pos"].append(pos if pos is not None else np.full(n, -1, np.int32))
                ev["label"].append(label if label is not None else np.full(n, -1, np.int8))
                ev["prop"].append(prop if prop is not None else np.full(n, np.nan, np.float32))

            if carry is not None:
                for k, v in carry.items():
                    ev[k].append(v)
            for slot in range(S):
                t0 = w.start_ms + day * DAY_MS + slot * slot_ms
                diurnal = _diurnal(cfg, slot)
                exp = _Exposure(cfg, w, t0)
                s = w.interest(cfg)
                # --- organic browsing ---
                bu, bdom, bi, baff = _browse(cfg, rng, w, exp, s, diurnal)
                if bu.size:
                    bts = t0 + rng.integers(0, slot_ms, bu.size)
                    add_events(bts, bu, bi, bdom, Action.CLICK)
                    lift = 2.0 * _sigmoid(cfg.affinity_scale * (baff - 0.5))  # ~1 at a typical engaged affinity
                    for act, p in deep:
                        m = rng.random(bu.size) < np.minimum(1.0, p * lift)
                        if m.any():
                            add_events(bts[m] + rng.integers(1, cfg.click_delay_max_ms + 1, int(m.sum())), bu[m], bi[m], bdom[m], act)
                eng_u, eng_i = [bu], [bi]
                # --- requests served by the logging policy ---
                n_rq = rng.poisson(w.req_rate * diurnal / S)
                ru = np.repeat(np.arange(U), n_rq)
                R = ru.size
                if R:
                    rdom = _categorical_rows(rng, w.domain_cum[ru])
                    rs = s[ru]
                    cand = _candidates(cfg, rng, exp, cfg.retrieval_noise, rs, rdom, w)
                    logit = (
                        cfg.affinity_scale * _affinity(w, rs, rdom, cand)
                        + cfg.pop_ctr_weight * w.pop_z[cand]
                        + w.domain_b[rdom][:, None]
                        + w.offset
                    )
                    ctr = _sigmoid(logit).astype(np.float32)
                    probs = _policy_probs(cfg, logit + cfg.policy_noise * rng.standard_normal(logit.shape)).astype(np.float32)
                    rts = t0 + rng.integers(0, slot_ms, R)
                    order = np.lexsort((ru, rts))
                    ru, rdom, cand, ctr, probs, rts = ru[order], rdom[order], cand[order], ctr[order], probs[order], rts[order]
                    rq["ts"].append(rts)
                    rq["user"].append(ru)
                    rq["domain"].append(rdom)
                    rq["cand"].append(cand)
                    rq["probs"].append(probs)
                    rq["ctr"].append(ctr)
                    # impressions: each position draws its item independently from the request's probabilities
                    P = cfg.slate_size
                    cum = np.cumsum(probs.astype(np.float64), axis=1)
                    cum /= cum[:, -1:]
                    u = rng.random((R, P))
                    idx = np.minimum(np.stack([(u[:, p : p + 1] > cum).sum(axis=1) for p in range(P)], axis=1), cfg.candidates - 1)
                    rows = np.repeat(np.arange(R), P)
                    ci = idx.reshape(-1)
                    imp_item = cand[rows, ci]
                    imp_ctr = ctr[rows, ci]
                    label = (rng.random(R * P) < imp_ctr).astype(np.int8)
                    # slots are disjoint in time and requests are sorted by (ts, user) inside one: sequential ids
                    rid = next_request_id + np.arange(R, dtype=np.int64)
                    rq["rid"].append(rid)
                    next_request_id += R
                    add_events(
                        rts[rows], ru[rows], imp_item, rdom[rows], Action.IMPRESSION,
                        rid=rid[rows],
                        pos=np.tile(np.arange(P, dtype=np.int32), R), label=label, prop=probs[rows, ci],
                    )
                    ctr_sum += float(imp_ctr.astype(np.float64).sum())
                    clicked = label.astype(bool)
                    if clicked.any():
                        cu = ru[rows][clicked]
                        add_events(rts[rows][clicked] + rng.integers(1, cfg.click_delay_max_ms + 1, int(clicked.sum())), cu, imp_item[clicked], rdom[rows][clicked], Action.CLICK)
                        eng_u.append(cu)
                        eng_i.append(imp_item[clicked])
                _update_state(cfg, rng, w, np.concatenate(eng_u), np.concatenate(eng_i), drift_step)

            # --- write the day ---
            day_end = w.start_ms + (day + 1) * DAY_MS
            cat = {k: np.concatenate(v) if v else np.zeros(0) for k, v in ev.items()}
            spill = cat["ts"] >= day_end
            if day + 1 < cfg.days and spill.any():
                carry = {k: v[spill] for k, v in cat.items()}
                cat = {k: v[~spill] for k, v in cat.items()}
            else:
                carry = None
            n_req = sum(a.shape[0] for a in rq["ts"])
            if n_req:
                req = {k: np.concatenate(v) for k, v in rq.items()}
                req_tab = pa.table(
                    {
                        "request_id": pa.array(req["rid"], pa.int64()),
                        "ts": pa.array(req["ts"], pa.int64()).cast(TS),
                        "user_id": pa.array(req["user"], pa.int64()),
                        "domain": pa.array(req["domain"], pa.int32()),
                        "policy": pa.array([POLICY_NAME] * n_req, pa.string()),
                        "candidate_item_ids": _list_array(w.item_id[req["cand"]], pa.int64()),
                        "logging_probs": _list_array(req["probs"], pa.float32()),
                    }
                )
                write_table(req_tab, out, "requests", compression=cfg.compression)
                ctr_writer.write_table(
                    pa.table({"request_id": pa.array(req["rid"], pa.int64()), "true_ctr": _list_array(req["ctr"], pa.float32())}, schema=ctr_schema)
                )
                counts["requests"] += n_req
            n = cat["ts"].shape[0]
            order = np.lexsort((cat["user"], cat["ts"].astype(np.int64)))
            cat = {k: v[order] for k, v in cat.items()}
            imp = cat["rid"] >= 0
            ev_tab = pa.table(
                {
                    "ts": pa.array(cat["ts"].astype(np.int64), pa.int64()).cast(TS),
                    "user_id": pa.array(cat["user"].astype(np.int64), pa.int64()),
                    "item_id": pa.array(w.item_id[cat["item"].astype(np.int64)], pa.int64()),
                    "domain": pa.array(cat["domain"].astype(np.int32), pa.int32()),
                    "action": pa.array(cat["action"].astype(np.int8), pa.int8()),
                    "request_id": pa.array(cat["rid"].astype(np.int64), pa.int64(), mask=~imp),
                    "position": pa.array(cat["pos"].astype(np.int32), pa.int32(), mask=~imp),
                    "label": pa.array(cat["label"].astype(np.int8), pa.int8(), mask=~imp),
                    "policy": pc.if_else(pa.array(imp), pa.scalar(POLICY_NAME, pa.string()), pa.scalar(None, pa.string())),
                    "propensity": pa.array(cat["prop"].astype(np.float32), pa.float32(), mask=~imp),
                }
            )
            if n:
                write_table(ev_tab, out, "events", compression=cfg.compression)
            counts["events"] += n
            counts["impressions"] += int(imp.sum())
            counts["clicks_on_impressions"] += int(cat["label"][imp].sum())
            action_counts += np.bincount(cat["action"].astype(np.int64), minlength=len(Action))
            events_per_user += np.bincount(cat["user"].astype(np.int64), weights=(~imp).astype(np.float64), minlength=U).astype(np.int64)
            all_per_user += np.bincount(cat["user"].astype(np.int64), minlength=U)
    finally:
        ctr_writer.close()

    # static tables
    order = np.argsort(w.item_id)
    items_tab = pa.table(
        {
            "item_id": pa.array(w.item_id[order], pa.int64()),
            "domain": pa.array(w.item_domain[order], pa.int32()),
            "category": pa.array(w.item_cat[order].astype(np.int64), pa.int64()),
            "created_ts": pa.array(w.created[order], pa.int64()).cast(TS),
        }
    )
    write_table(items_tab, out, "items", compression=cfg.compression)
    write_table(pa.table({"user_id": pa.array(np.arange(U, dtype=np.int64))}), out, "users", compression=cfg.compression)
    inv = np.argsort(w.item_id)  # by public id
    np.save(truth / "user_factors.npy", long_start)
    np.save(truth / "user_factors_by_day.npy", long_by_day)
    np.save(truth / "item_factors.npy", w.item_f[inv].astype(np.float32))
    np.save(truth / "item_popularity.npy", w.pop[inv])
    np.save(truth / "category_centroids.npy", w.centroids.astype(np.float32))
    np.save(truth / "domain_transform.npy", w.domain_w.astype(np.float32))
    np.save(truth / "domain_bias.npy", w.domain_b.astype(np.float32))
    np.save(truth / "user_activity.npy", w.activity)
    np.save(truth / "user_domain_probs.npy", w.domain_p.astype(np.float32))
    np.save(truth / "heavy_users.npy", np.flatnonzero(w.heavy).astype(np.int64))
    if cfg.personal_topics:
        np.save(truth / "user_topics.npy", w.topics.astype(np.float32))
        np.save(truth / "user_topic_categories.npy", w.topic_cat.astype(np.int64))

    organic = int(action_counts.sum() - action_counts[Action.IMPRESSION])
    truth_meta = {
        "click_model": "true_ctr = sigmoid(affinity_scale * <s_u * domain_transform[k], item_factors[i]> "
        "+ pop_ctr_weight * pop_z[i] + domain_bias[k] + offset); s_u = normalise(long_weight * l_u + "
        "(1 - long_weight) * h_u), h_u = EMA of engaged item factors (see recsys/data/simulator.py)"
        + ("; concurrent_topics: the max of that affinity over s_u and each personal topic" if cfg.concurrent_topics else ""),
        "offset": w.offset,
        "affinity_scale": cfg.affinity_scale,
        "pop_ctr_weight": cfg.pop_ctr_weight,
        "long_weight": cfg.long_weight,
        "pop_z_mean_log_popularity": float(np.log(w.pop).mean()),
        "pop_z_std_log_popularity": float(np.log(w.pop).std()),
        "target_ctr": cfg.target_ctr,
        "logged_mean_true_ctr": ctr_sum / max(counts["impressions"], 1),
        "policy": {"name": POLICY_NAME, "temperature": cfg.policy_temperature, "noise": cfg.policy_noise, "epsilon": cfg.policy_epsilon},
        "files": {
            "request_ctr/part-0.parquet": "request_id, true_ctr aligned with requests.candidate_item_ids",
            "user_factors.npy": "[users, d] long-term taste at the start (row = user_id)",
            "user_factors_by_day.npy": "[days, users, d] long-term taste at each day start",
            "item_factors.npy": "[items, d] unit item factors (row = item_id)",
            "item_popularity.npy": "[items] popularity weight (sums to 1), exposure and pop_z source",
            "category_centroids.npy": "[categories, d]",
            "domain_transform.npy": "[domains, d] diagonal transform W_k",
            "domain_bias.npy": "[domains] CTR bias b_k",
            "user_activity.npy": "[users] expected organic events per day",
            "user_domain_probs.npy": "[users, domains] domain preference",
            "heavy_users.npy": "user_ids of heavy users",
            **({"user_topics.npy": "[users, personal_topics, d] the topics a switch returns to",
                "user_topic_categories.npy": "[users, personal_topics] their categories"} if cfg.personal_topics else {}),
        },
    }
    (truth / "meta.json").write_text(json.dumps(truth_meta, indent=2))
    summary = {
        "config": cfg.model_dump(mode="json"),
        "counts": {
            **counts,
            "users": U,
            "items": cfg.items,
            "organic_events": organic,
            "actions": {a.name.lower(): int(action_counts[a]) for a in Action},
            "impression_ctr": counts["clicks_on_impressions"] / max(counts["impressions"], 1),
            "max_user_sequence": int(events_per_user.max()) if U else 0,  # non-impression events of one user
            "max_user_events": int(all_per_user.max()) if U else 0,  # all events incl. impressions
            "users_with_2000_plus": int((events_per_user >= 2000).sum()),
        },
        "seconds": round(time.perf_counter() - t_start, 3),
    }
    (out / "meta.json").write_text(json.dumps(summary, indent=2))
    return summary


def _list_array(mat: np.ndarray, typ: pa.DataType) -> pa.Array:
    """[R, C] matrix -> list<typ> array of R fixed-length rows (no copy of the values beyond the cast)."""
    R, C = mat.shape
    offsets = pa.array(np.arange(0, (R + 1) * C, C, dtype=np.int32), pa.int32())
    return pa.ListArray.from_arrays(offsets, pa.array(mat.reshape(-1), typ))
