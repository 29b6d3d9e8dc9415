"""The simulator: seeded determinism and the ground-truth contract that replay relies on (HELPERS.md)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from recsys.config import ConfigError, load_config
from recsys.data.history_signal import history_signal
from recsys.data.io import read_table
from recsys.data.schemas import Action
from recsys.data.simulator import SimulatorConfig, simulate
from tests.data.conftest import small_config


def _files(root: Path) -> dict[str, bytes]:
    """Every output file except the top-level meta.json (it records the run time)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p != root / "meta.json"}


def test_same_seed_gives_byte_identical_files(tmp_path, small_sim):
    first, summary = small_sim
    simulate(small_config(), tmp_path / "again")
    a, b = _files(first), _files(tmp_path / "again")
    assert sorted(a) == sorted(b)
    assert any(k.startswith("events/dt=") for k in a) and "truth/request_ctr/part-0.parquet" in a
    for k in a:
        assert a[k] == b[k], f"{k} differs between two runs with the same seed"


def test_different_seed_gives_different_data(tmp_path, small_sim):
    first, _ = small_sim
    simulate(small_config("seed=8"), tmp_path / "other")
    e1 = read_table(first, "events", columns=["user_id", "item_id"])
    e2 = read_table(tmp_path / "other", "events", columns=["user_id", "item_id"])
    assert not e1.equals(e2)


def test_requests_and_truth_are_consistent(small_sim):
    root, summary = small_sim
    cfg = small_config()
    req = read_table(root, "requests")
    truth = pq.read_table(root / "truth" / "request_ctr" / "part-0.parquet")
    assert req.num_rows == summary["counts"]["requests"] > 0
    assert truth.column("request_id").to_pylist() == req.column("request_id").to_pylist()
    assert len(set(req.column("request_id").to_pylist())) == req.num_rows
    cand = np.array(req.column("candidate_item_ids").to_pylist())
    probs = np.array(req.column("logging_probs").to_pylist(), dtype=np.float64)
    ctr = np.array(truth.column("true_ctr").to_pylist(), dtype=np.float64)
    assert cand.shape == probs.shape == ctr.shape == (req.num_rows, cfg.candidates)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (probs > 0).all(), "every candidate needs propensity > 0 (epsilon-uniform mixing)"
    assert (probs >= cfg.policy_epsilon / cfg.candidates * (1 - 1e-6)).all()
    assert ((ctr > 0) & (ctr < 1)).all()
    assert all(len(set(row)) == cfg.candidates for row in cand.tolist()), "candidates must be distinct"
    # request ids follow time
    ts = req.column("ts").cast("int64").to_numpy()
    assert (np.diff(ts) >= 0).all()


def test_impressions_are_bandit_rounds_of_their_request(small_sim):
    root, _ = small_sim
    cfg = small_config()
    req = read_table(root, "requests")
    ev = read_table(root, "events")
    imp = ev.filter(pc.equal(ev["action"], int(Action.IMPRESSION)))
    assert imp.num_rows == req.num_rows * cfg.slate_size
    assert imp.column("propensity").null_count == imp.column("label").null_count == imp.column("request_id").null_count == 0
    rid = imp.column("request_id").to_numpy()
    cand = np.array(req.column("candidate_item_ids").to_pylist())
    probs = np.array(req.column("logging_probs").to_pylist(), dtype=np.float32)
    item = imp.column("item_id").to_numpy()
    hit = cand[rid] == item[:, None]
    assert hit.any(axis=1).all(), "every shown item must be one of its request's candidates"
    idx = hit.argmax(axis=1)
    # propensity equals the request's logging probability of that item, exactly (same float32)
    assert np.array_equal(imp.column("propensity").to_numpy(), probs[rid, idx])
    np.testing.assert_array_equal(imp.column("user_id").to_numpy(), req.column("user_id").to_numpy()[rid])
    np.testing.assert_array_equal(imp.column("domain").to_numpy(), req.column("domain").to_numpy()[rid])
    np.testing.assert_array_equal(imp.column("ts").cast("int64").to_numpy(), req.column("ts").cast("int64").to_numpy()[rid])
    pos = imp.column("position").to_numpy()
    assert set(np.unique(pos).tolist()) == set(range(cfg.slate_size))
    assert set(np.unique(imp.column("label").to_numpy()).tolist()) <= {0, 1}
    assert set(imp.column("policy").unique().to_pylist()) == {"logging"}
    # organic events carry no impression fields
    org = ev.filter(pc.not_equal(ev["action"], int(Action.IMPRESSION)))
    assert org.column("request_id").null_count == org.num_rows
    assert org.column("propensity").null_count == org.num_rows


def test_each_clicked_impression_has_a_click_event(small_sim):
    root, summary = small_sim
    ev = read_table(root, "events", columns=["ts", "user_id", "item_id", "action", "label"])
    a = ev.column("action").to_numpy()
    clicked = (a == 0) & (np.nan_to_num(ev.column("label").to_numpy(zero_copy_only=False).astype(float)) == 1)
    assert clicked.sum() == summary["counts"]["clicks_on_impressions"] > 0
    ts = ev.column("ts").cast("int64").to_numpy()
    u, it = ev.column("user_id").to_numpy(), ev.column("item_id").to_numpy()
    clicks = {(int(x), int(y)): [] for x, y in zip(u[a == 1], it[a == 1])}
    for x, y, t in zip(u[a == 1], it[a == 1], ts[a == 1]):
        clicks[(int(x), int(y))].append(int(t))
    delay = small_config().click_delay_max_ms
    for x, y, t in zip(u[clicked], it[clicked], ts[clicked]):
        assert any(t < c <= t + delay for c in clicks.get((int(x), int(y)), [])), "clicked impression without its click"


def test_items_appear_only_after_creation_and_new_items_arrive(small_sim):
    root, summary = small_sim
    items = read_table(root, "items")
    assert items.num_rows == summary["config"]["items"]
    created = dict(zip(items.column("item_id").to_pylist(), items.column("created_ts").cast("int64").to_pylist()))
    ev = read_table(root, "events", columns=["ts", "item_id"])
    c = np.array([created[i] for i in ev.column("item_id").to_pylist()])
    assert (ev.column("ts").cast("int64").to_numpy() >= c).all()
    start = ev.column("ts").cast("int64").to_numpy().min()
    assert (np.array(list(created.values())) > start).sum() > 0, "some items must be created during the period"
    req = read_table(root, "requests", columns=["ts", "candidate_item_ids"])
    for t, cands in zip(req.column("ts").cast("int64").to_pylist(), req.column("candidate_item_ids").to_pylist()):
        assert all(created[i] <= t for i in cands)


def test_counts_truth_files_and_ctr_range(small_sim):
    root, summary = small_sim
    meta = json.loads((root / "meta.json").read_text())
    ev = read_table(root, "events", columns=["action", "label"])
    assert meta["counts"]["events"] == ev.num_rows
    actions = np.bincount(ev.column("action").to_numpy(), minlength=5)
    assert actions[int(Action.IMPRESSION)] < actions.sum() / 2, "organic events must be most of the history"
    assert all(actions[a] > 0 for a in range(5)), "every action type occurs"
    cfg = small_config()
    truth = root / "truth"
    assert np.load(truth / "user_factors.npy").shape == (cfg.users, cfg.factor_dim)
    assert np.load(truth / "item_factors.npy").shape == (cfg.items, cfg.factor_dim)
    assert np.load(truth / "user_factors_by_day.npy").shape == (cfg.days, cfg.users, cfg.factor_dim)
    tm = json.loads((truth / "meta.json").read_text())
    assert "offset" in tm and "click_model" in tm
    assert 0.01 < meta["counts"]["impression_ctr"] < 0.15
    # the labels follow the recorded true CTR: mean label ~ mean true CTR of shown items
    assert abs(meta["counts"]["impression_ctr"] - tm["logged_mean_true_ctr"]) < 0.03


def test_heavy_users_reach_2000_events(tmp_path):
    cfg = small_config("users=40", "items=300", "heavy_user_fraction=0", "min_heavy_users=2", "heavy_user_events=2500",
                       "events_per_user_day=5")
    s = simulate(cfg, tmp_path)
    ev = read_table(tmp_path, "events", columns=["user_id", "action"])
    org = ev.filter(pc.not_equal(ev["action"], 0)).column("user_id").to_numpy()
    per_user = np.bincount(org, minlength=cfg.users)
    heavy = np.load(tmp_path / "truth" / "heavy_users.npy")
    assert heavy.size == 2
    assert (per_user[heavy] >= 2000).all()
    assert s["counts"]["users_with_2000_plus"] >= 2


def test_config_rejects_too_few_items():
    with pytest.raises(ConfigError, match="candidates"):
        load_config(SimulatorConfig, None, ["items=40", "candidates=50"])


def test_rerun_replaces_its_own_output_and_refuses_foreign_data(tmp_path):
    simulate(small_config("days=2", "users=30", "items=200"), tmp_path / "d")
    simulate(small_config("days=1", "users=30", "items=200"), tmp_path / "d")
    assert sorted(p.name for p in (tmp_path / "d" / "events").iterdir()) == ["dt=2024-01-01"], "no stale partitions"
    foreign = tmp_path / "foreign"
    (foreign / "events").mkdir(parents=True)
    from recsys.data.io import DataError

    with pytest.raises(DataError, match="not written by this command"):
        simulate(small_config("users=30", "items=200"), foreign)


def test_recent_history_predicts_true_ctr_better_than_whole_history(small_sim):
    """The property sequence models exploit: the last items engaged with say more about the true click logit than
    the mean of the whole history (interests drift and switch topic)."""
    h = history_signal(small_sim[0], recent=20)
    recent, whole = h.corr(h.recent_score, min_history=50), h.corr(h.whole_score, min_history=50)
    assert recent > whole + 0.05, (recent, whole)


def test_personal_topics_put_signal_far_back_in_the_history(tmp_path, small_sim):
    """Returning interests: with personal topics, what a user engaged with before their newest 20 events predicts
    the click logit clearly better than without (they come back to those topics); the default leaves the stream
    untouched (the same-seed test pins the files), and the truth records the topics."""
    off = history_signal(small_sim[0], recent=20)
    cfg = small_config("personal_topics=3", "topic_return_prob=0.9")
    simulate(cfg, tmp_path)
    on = history_signal(tmp_path, recent=20)
    older_on, older_off = on.corr(on.older_score, min_history=50), off.corr(off.older_score, min_history=50)
    assert older_on > older_off + 0.04, (older_on, older_off)
    cats = np.load(tmp_path / "truth" / "user_topic_categories.npy")
    assert cats.shape == (cfg.users, 3) and all(len(set(r)) == 3 for r in cats.tolist())
    assert np.load(tmp_path / "truth" / "user_topics.npy").shape == (cfg.users, 3, cfg.factor_dim)
    assert not (small_sim[0] / "truth" / "user_topics.npy").exists()


def test_history_signal_r2_matches_the_closed_form_and_sees_a_stable_taste(tmp_path, small_sim):
    """R^2 with one score is the squared correlation (closed form of simple regression); with a stable, heavily
    weighted long-term taste the events before the newest 20 add explained variance, with the default dynamics
    (drifting taste, topic switches) they add almost none."""
    h = history_signal(small_sim[0], recent=20)
    assert h.r2(h.recent_score, min_history=50) == pytest.approx(h.corr(h.recent_score, min_history=50) ** 2, rel=1e-9)
    assert (h.history >= 0).all() and h.logit.shape == h.recent_score.shape == h.older_score.shape
    gain_default = h.r2(h.recent_score, h.older_score, min_history=50) - h.r2(h.recent_score, min_history=50)
    simulate(small_config("drift_rate=0.0", "long_weight=0.6"), tmp_path)
    s = history_signal(tmp_path, recent=20)
    gain_stable = s.r2(s.recent_score, s.older_score, min_history=50) - s.r2(s.recent_score, min_history=50)
    assert gain_stable > max(0.02, 3 * gain_default), (gain_stable, gain_default)


def test_concurrent_topics_make_the_relevant_history_depend_on_the_candidate(tmp_path, small_sim):
    """Concurrent interests (a user holds all personal topics at once, affinity = max over them): a candidate-aware
    attention score of the newest 32 events adds far more explained variance of the true logit to the best
    recency-weighted mean (window means of 2..32 events, least-squares weights) than with the default single
    interest. At tau = 0 the attention score is the mean score (closed form). The option needs personal topics."""
    def attention_gain(root: Path) -> float:
        h = history_signal(root, recent=32, attention_tau=2.0)
        means = h.recency_means(32)  # window means of the newest 2, 4, 8, 16 and 32 events
        return h.r2(*means, h.attention_score, min_history=20) - h.r2(*means, min_history=20)

    flat = history_signal(small_sim[0], recent=32, attention_tau=0.0)
    np.testing.assert_allclose(flat.attention_score, flat.recent_score, rtol=0, atol=1e-12)
    assert history_signal(small_sim[0], recent=32).attention_score is None
    simulate(small_config("personal_topics=4", "concurrent_topics=true"), tmp_path)
    gain_default, gain_concurrent = attention_gain(small_sim[0]), attention_gain(tmp_path)
    assert gain_concurrent > gain_default + 0.05, (gain_concurrent, gain_default)
    assert "concurrent_topics" in json.loads((tmp_path / "truth" / "meta.json").read_text())["click_model"]
    with pytest.raises(ConfigError, match="personal_topics"):
        small_config("concurrent_topics=true")
