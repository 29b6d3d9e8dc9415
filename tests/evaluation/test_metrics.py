"""The project's metrics against scikit-learn (and brute-force loops where sklearn has no grouped version)."""
import numpy as np
import pytest
from sklearn.metrics import log_loss, ndcg_score, roc_auc_score

from recsys.evaluation import metrics as M


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    n = 3000
    users = rng.integers(0, 60, n)
    scores = rng.normal(size=n)
    labels = (rng.random(n) < 1 / (1 + np.exp(-(scores + rng.normal(size=n))))).astype(int)
    return users, labels, scores


def test_auc_matches_sklearn(data):
    _, y, s = data
    assert M.auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    # ties: rounded scores
    sr = np.round(s, 1)
    assert M.auc(y, sr) == pytest.approx(roc_auc_score(y, sr), abs=1e-12)
    assert np.isnan(M.auc(np.ones(5), np.arange(5)))


def test_auc_placements_mean_is_auc_and_variance_is_delong(data):
    _, y, s = data
    sr = np.round(s, 1)
    a, u = M.auc_placements(y, sr)
    assert a == pytest.approx(roc_auc_score(y, sr), abs=1e-12)
    assert u.mean() == pytest.approx(a, abs=1e-12)
    # DeLong variance: var(V10)/n1 + var(V01)/n0, computed by brute force
    pos, neg = sr[y == 1], sr[y == 0]
    cmp = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v10, v01 = cmp.mean(axis=1), cmp.mean(axis=0)
    delong = v10.var(ddof=1) / pos.size + v01.var(ddof=1) / neg.size
    assert u.var(ddof=1) / u.size == pytest.approx(delong, rel=0.01)


def test_gauc_matches_per_user_sklearn(data):
    users, y, s = data
    num = den = 0.0
    for u in np.unique(users):
        m = users == u
        if 0 < y[m].sum() < m.sum():
            num += roc_auc_score(y[m], s[m]) * m.sum()
            den += m.sum()
    assert M.gauc(users, y, s) == pytest.approx(num / den, abs=1e-12)
    sr = np.round(s, 1)  # with ties
    g_ids, a, cnt = M.per_group_auc(users, y, sr)
    for gid, ag in zip(g_ids[:10], a[:10]):
        m = users == gid
        if 0 < y[m].sum() < m.sum():
            assert ag == pytest.approx(roc_auc_score(y[m], sr[m]), abs=1e-12)
        else:
            assert np.isnan(ag)


def test_logloss_matches_sklearn(data):
    _, y, s = data
    p = 1 / (1 + np.exp(-s))
    assert M.logloss(y, p) == pytest.approx(log_loss(y, p), abs=1e-12)


def brute_ranking(groups, y, s, k):
    hr, nd, rr = [], [], []
    for g in np.unique(groups):
        m = groups == g
        yy, ss = y[m], s[m]
        if yy.sum() == 0:
            continue
        order = np.argsort(-ss, kind="stable")
        ranked = yy[order]
        hr.append(float(ranked[:k].any()))
        rr.append(1.0 / (np.flatnonzero(ranked)[0] + 1))
        nd.append(ndcg_score(yy[None, :], ss[None, :], k=k) if yy.size > 1 else 1.0)
    return np.mean(hr), np.mean(nd), np.mean(rr)


@pytest.mark.parametrize("k", [1, 3, 10])
def test_ranking_metrics_match_sklearn_and_loops(data, k):
    users, y, s = data
    hr, nd, rr = brute_ranking(users, y, s, k)
    assert M.hit_rate_at_k(users, y, s, k) == pytest.approx(hr, abs=1e-12)
    assert M.ndcg_at_k(users, y, s, k) == pytest.approx(nd, abs=1e-9)
    assert M.mrr(users, y, s) == pytest.approx(rr, abs=1e-12)


def test_ranking_metrics_tiny_hand_computed():
    # one group: scores rank items c, a, b; only b is relevant -> rank 3
    g = np.array([7, 7, 7])
    y = np.array([0, 1, 0])[[0, 1, 2]]
    s = np.array([0.5, 0.1, 0.9])
    v = M.ranking_values(g, y, s, k=2)
    assert v["hr@2"].tolist() == [0.0]
    assert v["ndcg@2"].tolist() == [0.0]
    assert v["mrr"].tolist() == [pytest.approx(1 / 3)]
    v = M.ranking_values(g, y, s, k=3)
    assert v["ndcg@3"][0] == pytest.approx(1 / np.log2(4))
