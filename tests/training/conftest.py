from __future__ import annotations

from pathlib import Path

import pytest

from recsys.training.config import DataConfig
from recsys.training.data import find_table_files, make_spec
from tests.training.synth import write_training_table


@pytest.fixture(scope="session")
def train_data(tmp_path_factory) -> Path:
    """ROOT with ROOT/training/part-0.parquet (4000 learnable rows)."""
    return write_training_table(tmp_path_factory.mktemp("trdata"), n=4000)


@pytest.fixture(scope="session")
def spec_dict(train_data) -> dict:
    s = make_spec(find_table_files(train_data), DataConfig(max_len=16))
    return {"max_len": s.max_len, "vocab_sizes": dict(s.vocab_sizes)}
