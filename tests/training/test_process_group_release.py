"""After training, destroy_process_group must free the group: its gloo threads and rank 0's TCPStore server stop
then, not at interpreter teardown, where a surviving group intermittently aborted spawned workers (SIGABRT,
"terminate called without an active exception"; recsys/training/distributed.py says what held it)."""
from __future__ import annotations

import json
import os

import pytest

from tests.training.mp_helpers import spawn, train_config

GROUP_THREADS = {"pt_gloo_runloop", "gloo_tcp_loop", "pt_tcpstore_uv"}


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="native thread names are read from Linux /proc")
def test_trainer_leaves_no_process_group_threads_after_shutdown(train_data, spec_dict, tmp_path):
    cfg = train_config("row_wise", max_steps=2)
    run = tmp_path / "run"
    run.mkdir()
    files = sorted((train_data / "training").glob("*.parquet"))
    job = {"config": cfg.model_dump(mode="json"), "spec": spec_dict, "files": [str(p) for p in files],
           "run_dir": str(run), "resume": False}
    spawn(2, "train_then_release", job=job, out=str(tmp_path))
    for rank in range(2):
        left = set(json.loads((tmp_path / f"threads_{rank}.json").read_text())) & GROUP_THREADS
        assert not left, f"rank {rank}: process-group threads still running after destroy_process_group: {left}"
