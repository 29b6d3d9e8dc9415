"""The replay job end to end: malformed logs are rejected clearly; simulator logs give a full report."""
import json

import numpy as np
import pyarrow as pa
import pytest

from pipelines.replay_ab import ReplayConfig, load_replay_data, run_replay
from recsys.config import ConfigError
from recsys.data.io import DataError, ts_from_ms, write_table
from recsys.data.simulator import SimulatorConfig, simulate


def write_logs(root, propensity=(0.5, 0.25, 0.5), items=(10, 11, 20), request_ids=(1, 1, 2), extra_reward=None):
    n = len(items)
    ev = {
        "ts": ts_from_ms([1_700_000_000_000 + i for i in range(n)]),
        "user_id": pa.array([7] * n, pa.int64()),
        "item_id": pa.array(list(items), pa.int64()),
        "domain": pa.array([0] * n, pa.int32()),
        "action": pa.array([0] * n, pa.int8()),
        "request_id": pa.array(list(request_ids), pa.int64()),
        "position": pa.array(list(range(n)), pa.int32()),
        "label": pa.array([1, 0, 1][:n], pa.int8()),
        "policy": pa.array(["logging"] * n),
        "propensity": pa.array(list(propensity), pa.float32()),
    }
    write_table(pa.table(ev), root, "events")
    rq = {
        "request_id": pa.array([1, 2], pa.int64()),
        "ts": ts_from_ms([1_700_000_000_000, 1_700_000_000_001]),
        "user_id": pa.array([7, 7], pa.int64()),
        "domain": pa.array([0, 0], pa.int32()),
        "policy": pa.array(["logging"] * 2),
        "candidate_item_ids": pa.array([[10, 11, 12], [20, 21]], pa.list_(pa.int64())),
        "logging_probs": pa.array([[0.5, 0.25, 0.25], [0.5, 0.5]], pa.list_(pa.float32())),
    }
    write_table(pa.table(rq), root, "requests")


def test_valid_tiny_logs_load(tmp_path):
    write_logs(tmp_path)
    d = load_replay_data(tmp_path, ReplayConfig())
    assert d.rounds.n == 3
    np.testing.assert_array_equal(d.rounds.action_index, [0, 1, 3])
    np.testing.assert_allclose(d.rounds.pscore, [0.5, 0.25, 0.5])


@pytest.mark.parametrize(
    "kw,pattern",
    [
        (dict(propensity=(0.5, None, 0.5)), r"events/dt=.*\.parquet: column 'propensity' is null in 1 of 3 impression rows"),
        (dict(propensity=(0.5, 1.5, 0.0)), r"events/dt=.*\.parquet: column 'propensity' is outside \(0, 1\] in 2 of 3 impression rows"),
        (dict(items=(10, 13, 20)), r"events/dt=.*\.parquet: 1 impression rows .* item_id that is not among their request's candidate_item_ids.*request_id=1, item_id=13"),
        (dict(request_ids=(1, 1, 3)), r"1 impression rows .* request_id that is not in the requests table.*request_id=3"),
    ],
)
def test_malformed_logs_are_rejected_with_clear_messages(tmp_path, kw, pattern):
    write_logs(tmp_path, **kw)
    with pytest.raises(DataError, match=pattern):
        load_replay_data(tmp_path, ReplayConfig())


def test_missing_reward_column_and_bad_config(tmp_path):
    write_logs(tmp_path)
    with pytest.raises(DataError, match="missing reward column 'revenue'"):
        load_replay_data(tmp_path, ReplayConfig(reward="revenue"))
    with pytest.raises(ConfigError, match="default_rule"):
        run_replay(tmp_path, "uniform", "logging", tmp_path / "out", overrides=["default_rule=softmax(t=1)"])
    with pytest.raises(ConfigError, match="clip"):
        run_replay(tmp_path, "uniform", "logging", tmp_path / "out", overrides=["clip=-1"])


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("sim")
    simulate(SimulatorConfig(users=200, items=600, days=1, domains=2, seed=1), d)
    return d


def test_end_to_end_report_on_simulator(sim_dir, tmp_path):
    out = tmp_path / "report"
    r = run_replay(sim_dir, "oracle:truth@softmax(temperature=0.05)", "logging", out,
                   overrides=["n_bootstrap=200", "k=5"])
    for f in ("report.html", "report.md", "report.json"):
        assert (out / f).stat().st_size > 500
    j = json.loads((out / "report.json").read_text())
    assert set(j["scopes"]) == {"all", "domain=0", "domain=1"}
    s = j["scopes"]["all"]
    assert set(s["estimates"]) == {"replay", "ips", "snips", "dm", "dr", "sndr", "switch_dr"}
    assert s["truth"]["A"] > s["truth"]["B"]  # the oracle beats the logging policy
    # the logging policy evaluated by IPS on its own logs: weights are exactly 1 -> the logged mean reward
    assert s["estimates"]["ips"]["B"]["value"] == pytest.approx(s["logged_reward_mean"], rel=1e-6)
    assert s["diagnostics"]["B"]["ess_fraction"] == pytest.approx(1.0)
    for m in ("auc", "gauc", "logloss", "hr@5", "ndcg@5", "mrr"):
        assert m in s["ranking"]["A"], m
        v = s["ranking"]["A"][m]
        assert v["lo"] <= v["value"] <= v["hi"]
    html = (out / "report.html").read_text()
    assert html.count("<svg") >= 4
    assert 'src="http' not in html and "<link" not in html and "<script" not in html  # self-contained
    md = (out / "report.md").read_text()
    assert "| dr |" in md and "ground truth" in md
    assert r["scopes"]["all"]["estimates"]["dr"]["A"]["value"] == j["scopes"]["all"]["estimates"]["dr"]["A"]["value"]


def test_a_policy_against_itself_gives_zero_difference(sim_dir, tmp_path):
    r = run_replay(sim_dir, "oracle:truth@softmax(temperature=0.1)", "oracle:truth@softmax(temperature=0.1)", tmp_path,
                   overrides=["n_bootstrap=100", "ranking_metrics=false", "per_domain=false"])
    for name, e in r["scopes"]["all"]["estimates"].items():
        assert e["diff"]["diff"] == 0.0 and e["diff"]["lo"] == 0.0 and e["diff"]["hi"] == 0.0, name
        assert e["diff"]["p_value"] == 1.0


def test_cli_replay(sim_dir, tmp_path):
    from typer.testing import CliRunner

    from recsys.cli import app

    res = CliRunner().invoke(app, ["replay", "--logs", str(sim_dir), "--policy-a", "uniform", "--policy-b", "popularity@greedy",
                                   "--out", str(tmp_path / "o"), "--set", "n_bootstrap=50", "--set", "estimators=[ips,dr]"])
    assert res.exit_code == 0, res.output
    assert "ips" in res.output and (tmp_path / "o" / "report.html").exists()
    res = CliRunner().invoke(app, ["replay", "--logs", str(sim_dir), "--policy-a", "bogus", "--policy-b", "logging",
                                   "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "unknown source 'bogus'" in res.output
    help_ = CliRunner().invoke(app, ["replay", "--help"])
    assert "epsilon_greedy(epsilon=E, k=K)" in help_.output and "ranker:MODEL_DIR" in help_.output
