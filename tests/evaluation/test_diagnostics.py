"""Diagnostics: ESS by hand, warnings for tiny propensities, unsupported target mass and never-logged items."""
import numpy as np
import pytest

from recsys.evaluation.diagnostics import diagnose, effective_sample_size
from recsys.evaluation.ope import BanditRounds


def test_ess_hand_computed():
    # (1 + 1 + 2)^2 / (1 + 1 + 4) = 16 / 6
    assert effective_sample_size(np.array([1.0, 1.0, 2.0])) == pytest.approx(16 / 6)
    assert effective_sample_size(np.ones(10)) == pytest.approx(10)


def test_warnings():
    # request 0: candidates items [1, 2, 3], logging [0.9995, 0.0005, 0.0]; target [0.2, 0.3, 0.5] puts 0.5 on item 3,
    # which the logging policy never shows. Rounds: item 1 (p .9995), item 2 (p .0005 -> tiny).
    offsets = np.array([0, 3])
    logging = np.array([0.9995, 0.0005, 0.0])
    target = np.array([0.2, 0.3, 0.5])
    d = BanditRounds(offsets, [0, 0], [0, 1], [0.9995, 0.0005], [1.0, 0.0])
    dg = diagnose(d, target, logging, cand_item=np.array([1, 2, 3]), logged_item=np.array([1, 2]), clip=100.0,
                  min_propensity=1e-3, policy="B")
    w = np.array([0.2 / 0.9995, 0.3 / 0.0005])
    assert dg.ess == pytest.approx(w.sum() ** 2 / (w ** 2).sum())
    assert dg.max_weight == pytest.approx(600.0)
    assert dg.clipped_fraction == pytest.approx(0.5)
    assert dg.tiny_propensity_rounds == 1
    assert dg.unsupported_mass == pytest.approx(0.5) and dg.unsupported_rounds == 2
    assert dg.never_logged_top_items == 1  # item 3 is the target's top choice and never logged
    text = "\n".join(dg.warnings)
    assert "1 of 2 rounds have logging propensity < 0.001" in text
    assert "50.00% of its mass" in text and "never shows" in text
    assert "1 items it ranks first never appear" in text
    # uniform logging, target = logging: no warnings
    d2 = BanditRounds(np.array([0, 2]), [0, 0], [0, 1], [0.5, 0.5], [1.0, 0.0])
    dg2 = diagnose(d2, np.array([0.5, 0.5]), np.array([0.5, 0.5]), np.array([1, 2]), np.array([1, 2]))
    assert dg2.warnings == [] and dg2.logging_uniformity == 1.0 and dg2.ess_fraction == pytest.approx(1.0)
