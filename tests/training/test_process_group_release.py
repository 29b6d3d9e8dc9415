"""After work, `release_group` must free the process group: its gloo threads and rank 0's TCPStore server stop
then, not at interpreter teardown, where a surviving group intermittently aborted spawned workers (SIGABRT,
"terminate called without an active exception"). Two things kept it alive, each caught here: a torch default
argument bound at import (recsys/training/distributed.py; the trainer test fails without that import order) and
cyclic garbage from sharded steps (the LMN test fails without release_group's collection)."""
from __future__ import annotations

import json
import os

import pytest

from tests.training.mp_helpers import spawn, train_config, worker_job

GROUP_THREADS = {"pt_gloo_runloop", "gloo_tcp_loop", "pt_tcpstore_uv"}


def _threads_left(out) -> dict[int, set[str]]:
    return {r: set(json.loads((out / f"threads_{r}.json").read_text())) & GROUP_THREADS for r in range(2)}


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="native thread names are read from Linux /proc")
def test_no_process_group_threads_after_sharded_steps(tmp_path):
    """Row-wise sharded LMN steps leave cyclic garbage that holds the group (without the collection in
    release_group this fails deterministically)."""
    spawn(2, "work_then_release", work="lmn_row_wise_memory_steps", threads_dir=str(tmp_path), out=str(tmp_path / "losses.txt"))
    assert _threads_left(tmp_path) == {0: set(), 1: set()}


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="native thread names are read from Linux /proc")
def test_no_process_group_threads_after_the_trainer(train_data, spec_dict, tmp_path):
    job = worker_job(train_config("row_wise", max_steps=2), spec_dict, train_data, tmp_path / "run")
    spawn(2, "work_then_release", work="train_steps_only", threads_dir=str(tmp_path), job=job)
    assert _threads_left(tmp_path) == {0: set(), 1: set()}
