"""`recsys data inspect`: the summary agrees with the data it describes."""
from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from recsys.cli import app
from recsys.data.inspect import inspect_data, print_summary
from recsys.data.io import DataError, read_table


def test_summary_matches_the_events(small_sim, capsys):
    root, summary = small_sim
    s = inspect_data(root)
    ev = read_table(root, "events", columns=["ts", "user_id", "item_id", "domain", "action", "label"])
    assert s["events"] == ev.num_rows == summary["counts"]["events"]
    assert s["tables"]["requests"]["rows"] == summary["counts"]["requests"]
    assert s["users"] == len(set(ev.column("user_id").to_pylist()))
    assert s["items"] == len(set(ev.column("item_id").to_pylist()))
    assert s["domains"] == sorted(set(ev.column("domain").to_pylist()))
    per_user = np.unique(ev.column("user_id").to_numpy(), return_counts=True)[1]
    assert s["seq_len"]["max"] == per_user.max()
    assert s["seq_len"]["p50"] == pytest.approx(np.percentile(per_user, 50))
    assert s["seq_len_engagement"]["max"] == summary["counts"]["max_user_sequence"]
    a = ev.column("action").to_numpy()
    imp = a == 0
    lab = ev.column("label").to_numpy(zero_copy_only=False)
    dom = ev.column("domain").to_numpy()
    for d, v in s["ctr_by_domain"].items():
        m = imp & (dom == d)
        assert v["impressions"] == m.sum() and v["ctr"] == pytest.approx(lab[m].astype(float).mean())
    assert s["actions"]["impression"] == imp.sum()
    assert s["time_range"]["min"].startswith("2024-01-01") and s["time_range"]["days"] > 1.9
    print_summary(s)
    out = capsys.readouterr().out
    assert "click rate per domain" in out and "p99" in out


def test_cli_inspect_and_errors(small_sim, tmp_path):
    root, _ = small_sim
    runner = CliRunner()
    res = runner.invoke(app, ["data", "inspect", str(root)])
    assert res.exit_code == 0, res.output
    assert "events" in res.output and "users with >= 2000 events" in res.output
    res = runner.invoke(app, ["data", "inspect", str(tmp_path)])
    assert res.exit_code == 2 and "no events table" in res.output
    with pytest.raises(DataError, match="not a data directory"):
        inspect_data(tmp_path / "missing")
