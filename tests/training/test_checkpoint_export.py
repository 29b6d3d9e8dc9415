"""Checkpoints reshard across world sizes and plans (2 workers -> 1 -> 2) with identical logits, and the exported
artifact loads in a plain process (no process group) with the same logits."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from recsys.training.checkpoint import latest_checkpoint, read_meta
from recsys.training.export import export_run
from tests.training.mp_helpers import spawn, train_config, worker_job

PLAIN_SCORER = r"""
import sys, numpy as np, torch.distributed as dist
from recsys.training.export import load_exported
from recsys.data.batch import build_batch
from tests.training.mp_helpers import eval_rows
model, spec, info = load_exported(sys.argv[1])
assert not dist.is_initialized()
np.save(sys.argv[3], model(build_batch(eval_rows(sys.argv[2]), spec)).detach().numpy())
print(info.version)
"""


@pytest.mark.slow
def test_checkpoint_reshard_and_export(train_data, spec_dict, tmp_path):
    run = tmp_path / "run"
    cfg = train_config("table_wise", max_steps=6, checkpoint_every_steps=4, log_every_steps=2)
    job = worker_job(cfg, spec_dict, train_data, run)
    # 2 workers train (table-wise), then the checkpoint is read back into 2 workers (column-wise): reference logits
    a = tmp_path / "a.npy"
    spawn(2, "train_then_logits", job=job, data_dir=str(train_data), spec=spec_dict, sharding="column_wise", out=str(a))
    latest = latest_checkpoint(run)
    assert latest is not None and read_meta(latest)["step"] == 6 and read_meta(latest)["world_size"] == 2
    assert len(list((run / "checkpoints").glob("step_*"))) == 2  # step 4 and 6 kept
    # same checkpoint into 1 worker (row-wise), re-saved under that plan
    b, run1 = tmp_path / "b.npy", tmp_path / "run1"
    spawn(1, "logits_from_checkpoint", run_dir=str(run), data_dir=str(train_data), spec=spec_dict, sharding="row_wise", out=str(b), save_to=str(run1))
    # and back: the 1-worker checkpoint into 2 workers (table-wise)
    c = tmp_path / "c.npy"
    spawn(2, "logits_from_checkpoint", run_dir=str(run1), data_dir=str(train_data), spec=spec_dict, sharding="table_wise", out=str(c))
    la, lb, lc = np.load(a), np.load(b), np.load(c)
    assert np.abs(la).max() > 0 and la.std() > 0
    np.testing.assert_allclose(lb, la, atol=1e-5, rtol=0)
    np.testing.assert_allclose(lc, la, atol=1e-5, rtol=0)

    # export, then score in a fresh plain interpreter
    info = export_run(run, tmp_path / "model")
    assert info.step == 6 and info.model_name == "pooling"
    d = tmp_path / "d.npy"
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", PLAIN_SCORER, str(tmp_path / "model"), str(train_data), str(d)],
                         cwd=root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert info.version in out.stdout
    np.testing.assert_allclose(np.load(d), la, atol=1e-5, rtol=0)
