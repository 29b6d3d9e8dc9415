"""Small simulated data sets shared by the data tests (simulated once per session: seconds)."""
from __future__ import annotations

import pytest

from recsys.config import load_config
from recsys.data.simulator import SimulatorConfig, simulate

SMALL = ["users=300", "items=800", "days=2", "domains=2", "candidates=20", "slate_size=3", "slots_per_day=12", "seed=7"]


def small_config(*extra: str) -> SimulatorConfig:
    return load_config(SimulatorConfig, None, SMALL + list(extra))


@pytest.fixture(scope="session")
def small_sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    summary = simulate(small_config(), out)
    return out, summary
