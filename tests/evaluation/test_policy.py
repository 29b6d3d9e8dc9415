"""Policy SPECs: parsing, probability rules, sources."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.evaluation.policy import Candidates, PolicySpecError, apply_rule, make_policy, parse_rule, split_spec


def cands(true_ctr=None):
    # request 5: items [1, 2, 3]; request 9: items [2, 4]
    return Candidates(
        request_id=np.array([5, 9]), user_id=np.array([1, 2]), domain=np.array([0, 1]), ts=np.array([0, 0]),
        offsets=np.array([0, 3, 5]), item_id=np.array([1, 2, 3, 2, 4]),
        logging_probs=np.array([0.5, 0.3, 0.2, 0.6, 0.4]), true_ctr=true_ctr,
        logged_item=np.array([2, 2, 4, 1]), logged_reward=np.array([1.0, 1.0, 1.0, 0.0]),
    )


def test_softmax_rule_hand_computed():
    s = np.array([0.0, np.log(2.0), np.log(5.0), 1.0, 1.0])
    p = apply_rule(parse_rule("softmax(temperature=1)"), s, np.array([0, 3, 5]))
    np.testing.assert_allclose(p, [1 / 8, 2 / 8, 5 / 8, 0.5, 0.5])
    # temperature 0.5 squares the odds: 1, 4, 25
    p = apply_rule(parse_rule("softmax(temperature=0.5)"), s, np.array([0, 3, 5]))
    np.testing.assert_allclose(p[:3], [1 / 30, 4 / 30, 25 / 30])


def test_epsilon_greedy_rule_hand_computed():
    s = np.array([0.1, 0.9, 0.5, 0.3, 0.3])
    p = apply_rule(parse_rule("epsilon_greedy(epsilon=0.3, k=1)"), s, np.array([0, 3, 5]))
    # request 0: top = item at flat 1 -> 0.7 + 0.1; others 0.1. request 1: tie -> first one: 0.7 + 0.15, 0.15
    np.testing.assert_allclose(p, [0.1, 0.8, 0.1, 0.85, 0.15])
    p = apply_rule(parse_rule("epsilon_greedy(epsilon=0.3, k=2)"), s, np.array([0, 3, 5]))
    np.testing.assert_allclose(p, [0.1, 0.45, 0.45, 0.5, 0.5])
    p = apply_rule(parse_rule("greedy"), s, np.array([0, 3, 5]))
    np.testing.assert_allclose(p, [0, 1, 0, 1, 0])


@pytest.mark.parametrize("bad", ["softmax(temperature=0)", "softmax(t=1)", "epsilon_greedy(epsilon=2)", "boltzmann(1)", "softmax(temperature=x)"])
def test_bad_rules_are_rejected(bad):
    with pytest.raises(PolicySpecError, match="rule"):
        parse_rule(bad)


def test_split_spec_keeps_at_signs_in_paths():
    assert split_spec("scores:/a@b/x.parquet@greedy") == ("scores:/a@b/x.parquet", "greedy")
    assert split_spec("scores:/a@b/x.parquet") == ("scores:/a@b/x.parquet", None)


def test_sources():
    c = cands(true_ctr=np.array([0.1, 0.3, 0.2, 0.05, 0.5]))
    np.testing.assert_allclose(make_policy("logging", c).probs, c.logging_probs)
    np.testing.assert_allclose(make_policy("uniform", c).probs, [1 / 3] * 3 + [0.5] * 2)
    np.testing.assert_allclose(make_policy("oracle:truth@greedy", c).probs, [0, 1, 0, 0, 1])
    # popularity: reward counts item 2 -> 2, item 4 -> 1, others 0 -> greedy picks item 2 in both requests
    np.testing.assert_allclose(make_policy("popularity@greedy", c).probs, [0, 1, 0, 1, 0])
    p = make_policy("random:3", c, default_rule="softmax(temperature=2.0)")
    assert p.rule == "softmax(temperature=2)"
    np.testing.assert_allclose(np.add.reduceat(p.probs, [0, 3]), [1, 1])
    for bad, msg in [("logging@greedy", "takes no rule"), ("oracle:truth", None), ("magic", "unknown source"),
                     ("ranker:/nonexistent/dir", "not found"), ("scores:", "expected scores:PATH")]:
        if bad == "oracle:truth":
            with pytest.raises(PolicySpecError, match="ground truth"):
                make_policy(bad, cands())
            continue
        with pytest.raises(PolicySpecError, match=msg):
            make_policy(bad, c)


def test_scores_file(tmp_path):
    c = cands()
    path = tmp_path / "s.parquet"
    pq.write_table(pa.table({"request_id": [9, 9, 5, 5, 5], "item_id": [4, 2, 3, 2, 1], "score": [0.9, 0.1, 0.5, 0.2, 0.1]}), path)
    p = make_policy(f"scores:{path}@greedy", c)
    np.testing.assert_allclose(p.scores, [0.1, 0.2, 0.5, 0.1, 0.9])
    np.testing.assert_allclose(p.probs, [0, 0, 1, 0, 1])
    assert p.ctr is not None  # scores in [0, 1] are taken as click probabilities
    pq.write_table(pa.table({"request_id": [9, 5], "item_id": [4, 3], "score": [0.9, 0.5]}), path)
    with pytest.raises(PolicySpecError, match="3 of 5 .* have no score"):
        make_policy(f"scores:{path}", c)
    pq.write_table(pa.table({"request_id": [9], "item": [4]}), path)
    with pytest.raises(PolicySpecError, match="missing column 'item_id'"):
        make_policy(f"scores:{path}", c)


def test_flat_index():
    c = cands()
    np.testing.assert_array_equal(c.flat_index([5, 5, 9, 9, 9, 7], [3, 1, 4, 2, 1, 1]), [2, 0, 4, 3, -1, -1])
