"""Coverage on simulator data with known ground truth: the 95% bootstrap intervals of IPS, SNIPS, DR (and SNDR)
contain the target policy's true value in about 95% of independent simulations (40 seeds; ~40 s)."""
import numpy as np

from pipelines.replay_ab import ReplayConfig, load_replay_data
from recsys.data.simulator import SimulatorConfig, simulate
from recsys.evaluation.bootstrap import bootstrap
from recsys.evaluation.ope import estimate_all, fit_item_reward_model, true_value
from recsys.evaluation.policy import make_policy

SEEDS = 40
ESTIMATORS = ["ips", "snips", "dr", "sndr"]


def test_intervals_cover_the_true_value(tmp_path):
    hits = {k: 0 for k in ESTIMATORS}
    errors = {k: [] for k in ESTIMATORS}
    for seed in range(SEEDS):
        d = tmp_path / f"s{seed}"
        simulate(SimulatorConfig(users=200, items=600, days=1, domains=2, seed=seed), d)
        data = load_replay_data(d, ReplayConfig())
        c = data.cands
        # target: a softmax over the true click probabilities (much better than the logging policy)
        pol = make_policy("oracle:truth@softmax(temperature=0.05)", c)
        bucket = np.repeat(c.domain, np.diff(c.offsets))
        q = fit_item_reward_model(data.rounds, c.item_id, bucket, shrinkage=20.0, folds=2, seed=seed)
        est = estimate_all(data.rounds, pol.probs, q, ESTIMATORS)
        truth = true_value(data.rounds, pol.probs, c.true_ctr)  # ground truth from DIR/truth/request_ctr
        r = bootstrap([est[k] for k in ESTIMATORS], n_boot=300, alpha=0.05, seed=seed)
        for i, k in enumerate(ESTIMATORS):
            iv = r.interval(i)
            hits[k] += iv.lo <= truth <= iv.hi
            errors[k].append(est[k].value - truth)
    coverage = {k: v / SEEDS for k, v in hits.items()}
    print("coverage", coverage, "mean error", {k: float(np.mean(v)) for k, v in errors.items()})
    for k in ("ips", "snips", "dr"):
        assert 0.85 <= coverage[k] <= 1.0, (k, coverage)
    assert 0.8 <= coverage["sndr"] <= 1.0, coverage
    # and the estimators are centred on the truth (no systematic bias beyond noise)
    for k in ("ips", "dr"):
        e = np.asarray(errors[k])
        assert abs(e.mean()) < 3 * e.std(ddof=1) / np.sqrt(SEEDS), (k, e.mean())
