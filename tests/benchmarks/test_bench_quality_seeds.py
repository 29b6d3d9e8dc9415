"""bench_quality --train-seeds: run labels, inherited overrides and the per-seed paired summary."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from bench_quality import seed_list, seed_summary, seeded_runs  # noqa: E402


def test_seeded_runs_label_and_inherit_overrides():
    names, extra = seeded_runs(["pooling", "din@w"], [0, 3], {"din@w": ["model.attention_len=8"]})
    assert names == ["pooling", "pooling@seed3", "din@w", "din@w@seed3"]
    assert extra["pooling"] == ["seed=0"] and extra["pooling@seed3"] == ["seed=3"]
    assert extra["din@w@seed3"] == ["model.attention_len=8", "seed=3"]  # the seed comes last: it wins


def test_seed_summary_pairs_each_seed_with_pooling_of_the_same_seed():
    rows = [{"model": "oracle (true CTR)", "truth_auc": 0.9}, {"model": "ref", "truth_auc": 0.7, "reference": True}]
    rows += [{"model": m, "truth_auc": t, "steps": 10} for m, t in
             [("pooling", 0.70), ("pooling@seed1", 0.72), ("din", 0.71), ("din@seed1", 0.71)]]
    s = seed_summary(rows)
    assert set(s) == {"pooling", "din"}  # the oracle and the reference row are not trained runs
    assert s["pooling"]["n"] == 2 and s["pooling"]["truth_auc_mean"] == pytest.approx(0.71)
    assert "d_truth_auc" not in s["pooling"]
    d = s["din"]["d_truth_auc"]
    assert (d["mean"], d["min"], d["max"]) == pytest.approx((0.0, -0.01, 0.01))
    assert d["sd"] == pytest.approx(0.02 ** 0.5 / 10)  # sample sd (ddof=1) of [+0.01, -0.01]


def test_seed_list_rejects_malformed_and_repeated_seeds():
    assert seed_list("0,1,2") == [0, 1, 2]
    for bad in ("1,x", "1,1", "-1", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            seed_list(bad)
