"""`recsys train --no-ray` on a raw simulator data dir (the training table is built on the fly), then export and a
plain-process load: the user-facing path end to end, in one process, world size 1."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import torch

from recsys.config import load_config
from recsys.data.batch import build_batch
from recsys.data.simulator import SimulatorConfig, simulate
from recsys.evaluation.metrics import auc
from recsys.training.config import DataConfig
from recsys.training.data import find_table_files, read_training, time_split
from recsys.training.export import load_exported


def test_no_ray_train_from_raw_data_then_export(tmp_path):
    from pipelines.train_ranker import run_training
    from recsys.training.export import export_run

    raw = tmp_path / "raw"
    simulate(load_config(SimulatorConfig, None, ["users=150", "items=300", "days=2", "domains=2", "seed=3"]), raw)
    run = tmp_path / "run"
    final = run_training("configs/pooling.yaml", raw, run, use_ray=False, overrides=[
        "max_steps=12", "checkpoint_every_steps=5", "log_every_steps=2", "data.batch_size=64", "data.max_len=16",
        "model.embedding.dim=8", "model.hidden=[16]", "optimizer.dense=adam_pp", "precision=bf16"])
    assert find_table_files(run / "features") is not None  # built from the raw dir
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if r["kind"] == "train"] == [2, 4, 6, 8, 10, 12]
    assert final is not None and final["final"] and final["step"] == 12
    assert set(final["overall"]) >= {"auc", "gauc", "logloss", "n"} and final["per_domain"]
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_00000010", "step_00000012"]

    # predictions.parquet: exactly the validation rows, in table order, and the logits the final metrics came from
    preds = pq.read_table(run / "predictions.parquet")
    validation = time_split(read_training(find_table_files(run / "features")), DataConfig()).validation
    assert preds.num_rows == final["overall"]["n"] == validation.num_rows
    for col in ("request_id", "user_id", "item_id", "label"):
        assert preds.column(col).equals(validation.column(col))
    assert abs(auc(preds["label"].to_numpy(), preds["logit"].to_numpy()) - final["overall"]["auc"]) < 1e-12

    info = export_run(run, tmp_path / "model")
    model, spec, got = load_exported(tmp_path / "model")
    assert got == info and not torch.distributed.is_initialized()
    rows = read_training(find_table_files(run / "features")).slice(0, 32)
    with torch.no_grad():
        a = model(build_batch(rows, spec))
        state = model.encode_user(build_batch(rows, spec))
        b = model.score(state, build_batch(rows, spec).candidates())[:, 0]
    assert np.isfinite(a.numpy()).all()
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
