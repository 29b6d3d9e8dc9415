"""Every estimator on a tiny hand-computed example (expected numbers worked out by hand in the comments)."""
import numpy as np
import pytest

from recsys.evaluation import ope
from recsys.evaluation.ope import BanditRounds

# Two requests. Request 0: candidates flat 0..2, logging probs [0.5, 0.25, 0.25], target [0.2, 0.6, 0.2],
# reward model q [0.1, 0.5, 0.2]. Request 1: candidates flat 3..4, logging [0.5, 0.5], target [1.0, 0.0], q [0.4, 0.3].
OFFSETS = np.array([0, 3, 5])
TARGET = np.array([0.2, 0.6, 0.2, 1.0, 0.0])
QHAT = np.array([0.1, 0.5, 0.2, 0.4, 0.3])
# Rounds: (request, flat action, propensity, reward)
#   r0: req 0, flat 1, p 0.25, r 1  -> w = 0.6/0.25 = 2.4
#   r1: req 0, flat 0, p 0.5,  r 0  -> w = 0.2/0.5  = 0.4
#   r2: req 1, flat 3, p 0.5,  r 1  -> w = 1.0/0.5  = 2.0
#   r3: req 1, flat 4, p 0.5,  r 0  -> w = 0.0/0.5  = 0.0
DATA = BanditRounds(OFFSETS, [0, 0, 1, 1], [1, 0, 3, 4], [0.25, 0.5, 0.5, 0.5], [1.0, 0.0, 1.0, 0.0])


def check(est, expected):
    assert est.value == pytest.approx(expected, abs=1e-12)
    assert est.values.mean() == pytest.approx(expected, abs=1e-12)  # the per-round vector carries the estimate


def test_ips():
    # (2.4*1 + 0.4*0 + 2*1 + 0*0) / 4 = 4.4 / 4
    check(ope.ips(DATA, TARGET), 1.1)
    # clip=2: weights [2, 0.4, 2, 0] -> (2 + 2) / 4
    check(ope.ips(DATA, TARGET, clip=2.0), 1.0)


def test_snips():
    # 4.4 / (2.4 + 0.4 + 2 + 0) = 4.4 / 4.8
    check(ope.snips(DATA, TARGET), 4.4 / 4.8)
    # clip=2: 4 / (2 + 0.4 + 2) = 4 / 4.4
    check(ope.snips(DATA, TARGET, clip=2.0), 4.0 / 4.4)


def test_dm():
    # DM req0 = 0.2*0.1 + 0.6*0.5 + 0.2*0.2 = 0.36; req1 = 1*0.4 + 0*0.3 = 0.4; rounds: 0.36, 0.36, 0.4, 0.4
    check(ope.dm(DATA, TARGET, QHAT), 1.52 / 4)


def test_dr():
    # r0: 0.36 + 2.4*(1-0.5) = 1.56; r1: 0.36 + 0.4*(0-0.1) = 0.32; r2: 0.4 + 2*(1-0.4) = 1.6; r3: 0.4 + 0 = 0.4
    check(ope.dr(DATA, TARGET, QHAT), 3.88 / 4)
    # clip=2: r0 = 0.36 + 2*0.5 = 1.36 -> (1.36 + 0.32 + 1.6 + 0.4) / 4
    check(ope.dr(DATA, TARGET, QHAT, clip=2.0), 3.68 / 4)


def test_sndr():
    # mean DM 0.38 + (1.2 - 0.04 + 1.2 + 0) / 4.8
    check(ope.sndr(DATA, TARGET, QHAT), 0.38 + 2.36 / 4.8)


def test_switch_dr():
    # tau=2: r0 has w=2.4 > 2 -> DM only (0.36); r1 0.32; r2 (w=2 <= 2) 1.6; r3 0.4 -> 2.68 / 4
    e = ope.switch_dr(DATA, TARGET, QHAT, tau=2.0)
    check(e, 2.68 / 4)
    assert e.info["switched"] == 1
    # tau large: identical to DR
    check(ope.switch_dr(DATA, TARGET, QHAT, tau=1e9), 3.88 / 4)


def test_replay_argmax_and_sample():
    # argmax: req0 -> flat 1, req1 -> flat 3; matches r0 (reward 1) and r2 (reward 1) -> 2 / 2
    e = ope.replay(DATA, TARGET, mode="argmax")
    check(e, 1.0)
    assert e.info["matched"] == 2
    # a second example: uniform logging over 2 candidates, deterministic target picks flat 0 / flat 2
    offsets = np.array([0, 2, 4])
    target = np.array([1.0, 0.0, 1.0, 0.0])
    d = BanditRounds(offsets, [0, 0, 1, 1, 1], [0, 1, 2, 2, 3], [0.5] * 5, [1.0, 1.0, 0.0, 1.0, 1.0])
    # kept rounds: 0 (r 1), 2 (r 0), 3 (r 1) -> 2 / 3; the sampled version of a deterministic target is the same
    check(ope.replay(d, target, mode="argmax"), 2 / 3)
    check(ope.replay(d, target, mode="sample", seed=3), 2 / 3)


def test_replay_sampling_matches_probabilities():
    # one request, 2 candidates, target (0.25, 0.75): the sampled action matches the logged flat 1 ~75% of rounds
    n = 20000
    d = BanditRounds([0, 2], np.zeros(n, int), np.ones(n, int), np.full(n, 0.5), np.ones(n))
    e = ope.replay(d, np.array([0.25, 0.75]), mode="sample", seed=0)
    assert e.info["matched"] / n == pytest.approx(0.75, abs=0.02)


def test_estimate_all_and_truth():
    out = ope.estimate_all(DATA, TARGET, QHAT, clip=None, switch_tau=2.0, replay_mode="argmax")
    assert set(out) == set(ope.ESTIMATORS)
    assert out["dr"].value == pytest.approx(0.97)
    with pytest.raises(ValueError, match="needs a reward model"):
        ope.estimate_all(DATA, TARGET, None, ["dr"])
    with pytest.raises(ValueError, match="unknown estimator"):
        ope.estimate_all(DATA, TARGET, QHAT, ["nope"])
    # truth with true ctr == QHAT equals DM
    assert ope.true_value(DATA, TARGET, QHAT) == pytest.approx(0.38)


def test_item_reward_model_hand_computed():
    # one fold (no cross-fitting), shrinkage 2. Bucket 0 holds all candidates; logged: item 10 (flat 0) twice with
    # rewards 1, 0 and item 11 (flat 1) once with reward 1. Bucket mean = 2/3.
    # q(10) = (1 + 2*2/3) / (2 + 2) = 7/12; q(11) = (1 + 4/3) / 3 = 7/9; q(12) (never logged) = 2/3.
    d = BanditRounds([0, 3], [0, 0, 0], [0, 0, 1], [0.5, 0.5, 0.5], [1.0, 0.0, 1.0])
    q = ope.fit_item_reward_model(d, np.array([10, 11, 12]), np.zeros(3, int), shrinkage=2.0, folds=1)
    np.testing.assert_allclose(q, [7 / 12, 7 / 9, 2 / 3])


def test_item_reward_model_crossfit_never_uses_own_fold():
    rng = np.random.default_rng(0)
    R, C = 200, 5
    offsets = np.arange(R + 1) * C
    items = np.tile(np.arange(C), R)
    rr = np.repeat(np.arange(R), 2)
    act = offsets[rr] + rng.integers(0, C, rr.size)
    d = BanditRounds(offsets, rr, act, np.full(rr.size, 0.2), rng.integers(0, 2, rr.size).astype(float))
    q2 = ope.fit_item_reward_model(d, items, np.zeros(items.size, int), shrinkage=1.0, folds=2, seed=1)
    # changing the rewards of fold-0 requests must not change fold-0 predictions
    fold = np.random.default_rng(1).integers(0, 2, R)
    r2 = d.reward.copy()
    r2[fold[rr] == 0] = 1 - r2[fold[rr] == 0]
    d2 = BanditRounds(offsets, rr, act, d.pscore, r2)
    q2b = ope.fit_item_reward_model(d2, items, np.zeros(items.size, int), shrinkage=1.0, folds=2, seed=1)
    f0 = fold[np.repeat(np.arange(R), C)] == 0
    np.testing.assert_allclose(q2[f0], q2b[f0])
    assert not np.allclose(q2[~f0], q2b[~f0])
