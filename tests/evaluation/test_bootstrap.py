"""The block-multinomial bootstrap: exact resampling distribution, intervals, pairing, determinism."""
import numpy as np
import pytest

from recsys.evaluation.bootstrap import bootstrap, bootstrap_mean, normal_interval, paired_difference, resample_sums
from recsys.evaluation.ope import Estimate


def test_resample_counts_are_exactly_multinomial():
    # columns = identity: each resample's column sums are the per-row draw counts. n=10 rows in blocks of 4
    # (3 blocks, the last one partial) must behave like Multinomial(10, 1/10): total exactly 10, E[c]=1,
    # Var[c] = 1 - 1/10, Cov[c_i, c_j] = -1/10.
    n, B = 10, 40000
    sums, path = resample_sums(np.eye(n), B, seed=1, block=4, sparse=False)
    assert path == "dense"
    counts = np.rint(sums)
    np.testing.assert_allclose(sums, counts, atol=1e-6)
    assert np.all(counts.sum(axis=1) == n)
    assert counts.mean(axis=0) == pytest.approx(np.ones(n), abs=0.02)
    cov = np.cov(counts.T)
    assert np.diag(cov) == pytest.approx(np.full(n, 0.9), abs=0.03)
    off = cov[~np.eye(n, dtype=bool)]
    assert off.mean() == pytest.approx(-0.1, abs=0.01)


def test_sparse_path_counts_match_multinomial():
    # 3 nonzero rows out of 30: the sparse path resamples only them; their counts still look Binomial(30, 1/30)
    n, B = 30, 40000
    cols = np.zeros((n, 3))
    cols[[2, 11, 29], [0, 1, 2]] = 1.0
    sums, path = resample_sums(cols, B, seed=2, sparse=True)
    assert path == "sparse"
    c = np.rint(sums)
    assert c.mean(axis=0) == pytest.approx(np.ones(3), abs=0.02)
    assert c.var(axis=0) == pytest.approx(np.full(3, 1 - 1 / n), abs=0.04)
    assert np.cov(c.T)[0, 1] == pytest.approx(-1 / n, abs=0.01)


@pytest.mark.parametrize("n,rare", [(50_000, False), (200_000, False), (200_000, True)])
def test_interval_of_a_mean_matches_normal_approximation(n, rare):
    rng = np.random.default_rng(0)
    v = rng.exponential(size=n)
    if rare:
        v = v * (rng.random(n) < 0.03)  # rare rewards: the sparse path
    r = bootstrap_mean(v, n_boot=2000, seed=3)
    assert r.path == ("sparse" if rare else "dense")
    iv = r.interval(0)
    lo, hi = normal_interval(v)
    half = (hi - lo) / 2
    se = v.std(ddof=1) / np.sqrt(n)
    assert iv.value == pytest.approx(v.mean())
    assert iv.se == pytest.approx(se, rel=0.07)
    assert abs(iv.lo - lo) < 0.15 * half
    assert abs(iv.hi - hi) < 0.15 * half


def test_ratio_estimate_replicates_are_exact_ratios():
    # ratio estimates: each replicate = sum(c*num) / sum(c*den) on the same draws -> bounded by min/max of num/den
    rng = np.random.default_rng(1)
    den = rng.uniform(0.5, 2, 1000)
    num = den * rng.uniform(0, 1, 1000)
    e = Estimate("snips", num.sum() / den.sum(), np.stack([num, den], 1), "ratio")
    r = bootstrap([e], n_boot=500, seed=0)
    assert np.all((r.draws >= 0) & (r.draws <= 1))
    assert r.draws.mean() == pytest.approx(e.value, abs=0.01)


def test_paired_difference_of_a_policy_with_itself_is_exactly_zero():
    rng = np.random.default_rng(2)
    v = rng.normal(size=(5000, 3))
    a = Estimate("sndr", 0.0, v, "mean_plus_ratio")
    a.value = float(a.values.mean())
    r = bootstrap([a, a], n_boot=300, seed=5, names=["A", "B"])
    d = paired_difference(r, "A", "B")
    assert np.all(r.draws[:, 0] == r.draws[:, 1])
    assert d["diff"] == 0.0 and d["lo"] == 0.0 and d["hi"] == 0.0 and d["se"] == 0.0
    assert d["p_value"] == 1.0


def test_paired_difference_detects_a_shift_and_pairing_shrinks_the_interval():
    rng = np.random.default_rng(3)
    base = rng.normal(size=20000)
    a = Estimate("ips", 0.0, (base + 0.05)[:, None], "mean")
    b = Estimate("ips", 0.0, base[:, None], "mean")
    a.value, b.value = float(a.values.mean()), float(b.values.mean())
    r = bootstrap([a, b], n_boot=500, seed=1, names=["A", "B"])
    d = paired_difference(r, "A", "B")
    assert d["diff"] == pytest.approx(0.05)
    assert d["lo"] == pytest.approx(0.05, abs=1e-5) and d["hi"] == pytest.approx(0.05, abs=1e-5)  # perfectly paired
    assert d["p_value"] < 0.01


def test_result_depends_on_seed_not_on_workers():
    v = np.random.default_rng(4).normal(size=(150_000, 2))
    s1, _ = resample_sums(v, 64, seed=9, workers=1)
    s2, _ = resample_sums(v, 64, seed=9, workers=2)
    s3, _ = resample_sums(v, 64, seed=10, workers=1)
    np.testing.assert_array_equal(s1, s2)
    assert not np.allclose(s1, s3)


def test_estimates_must_share_rounds():
    a = Estimate("x", 0.0, np.zeros((3, 1)))
    b = Estimate("y", 0.0, np.zeros((4, 1)))
    with pytest.raises(ValueError, match="share their rounds"):
        bootstrap([a, b], n_boot=10)
