"""Every registered model trains through the trainer (DMP, fused embedding optimizer, eval, checkpoint, export)
in-process at world size 1: catches integration breaks (e.g. a module method shadowing nn.Module API that DMP uses).
The 2-worker version of this smoke run is in the training report; here it stays cheap."""
from __future__ import annotations

import json

import pytest

from recsys.models.registry import MODELS

SHRINK = {  # keep big default tables/sequences small (only fields the model's config has)
    "memory": ["model.memory.n_keys=32"],
    "memory_len": ["model.memory_len=8"],
    "merge_k": ["model.merge_k=4"],
    "recent_k": ["model.recent_k=4"],
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_trains_under_dmp_and_exports(name, train_data, tmp_path):
    from pipelines.train_ranker import run_training
    from recsys.training.export import export_run, load_exported

    cfg_cls = MODELS[name][0]
    sets = [s for field, ss in SHRINK.items() if field in cfg_cls.model_fields for s in ss]
    run = tmp_path / "run"
    final = run_training(f"configs/{name}.yaml", train_data, run, use_ray=False, overrides=[
        "max_steps=3", "log_every_steps=1", "checkpoint_every_steps=2", "data.max_len=16", "data.batch_size=32",
        "data.eval_batch_size=256", "data.validation_fraction=0.05", "device=cpu", *sets])
    recs = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if '"train"' in l]
    assert len(recs) == 3 and all(0 < r["loss"] < 5 and r["grad_norm_max"] > 0 for r in recs)
    assert final is not None and final["step"] == 3 and final["overall"]["n"] == 200
    export_run(run, tmp_path / "model")
    assert load_exported(tmp_path / "model").info.model_name == name
