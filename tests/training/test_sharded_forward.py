"""2-process (gloo) DMP forward equals the unsharded model's forward on the same weights."""
from __future__ import annotations

import pytest
import torch

from tests.training.mp_helpers import spawn


@pytest.mark.slow
def test_two_process_sharded_forward_equals_unsharded(train_data, spec_dict, tmp_path):
    spawn(2, "sharded_forward", data_dir=str(train_data), spec=spec_dict, out=str(tmp_path))
    for rank in (0, 1):
        report = torch.load(tmp_path / f"report_{rank}.pt")
        assert set(report) == {"row_wise", "table_wise", "column_wise"}
        for sharding, diff in report.items():
            assert diff < 1e-5, f"rank {rank} {sharding}: sharded forward differs by {diff}"
