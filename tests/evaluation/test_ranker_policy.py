"""`ranker:MODEL_DIR` policies: an exported ranker scores every candidate with encode_user once per request +
score(state, candidates) on point-in-time sequences, and agrees with the full forward on the training table."""
import json

import numpy as np
import torch

from feature_store.definitions import load_feature_config
from feature_store.offline import build_training_table
from pipelines.replay_ab import ReplayConfig, load_replay_data
from recsys.config import CONFIG_DIR, read_yaml, validate
from recsys.data.batch import BatchSpec, build_batch
from recsys.data.io import read_table
from recsys.data.simulator import SimulatorConfig, simulate
from recsys.evaluation.policy import make_policy
from recsys.training.config import TrainConfig
from recsys.training.export import FORMAT_VERSION, load_exported
from recsys.training.loop import build_training_model


def write_artifact(d, spec: BatchSpec):
    """A model directory in the `recsys export` layout (seeded random weights: agreement, not quality, is tested)."""
    data = read_yaml(CONFIG_DIR / "pooling.yaml")
    data["data"]["max_len"] = spec.max_len
    cfg = validate(TrainConfig, data)
    torch.manual_seed(0)
    model = build_training_model(cfg, spec)
    d.mkdir()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, d / "model.pt")
    (d / "config.yaml").write_text(json.dumps(cfg.model_dump(mode="json")))
    (d / "batch_spec.json").write_text(json.dumps({"max_len": spec.max_len, "vocab_sizes": spec.vocab_sizes}))
    (d / "version.json").write_text(json.dumps({"format_version": FORMAT_VERSION, "model_name": "pooling", "version": "pooling-0-test",
                                                "step": 0, "source_run": "test", "created": "now", "torch": "", "torchrec": ""}))


def test_ranker_policy_matches_full_forward(tmp_path):
    sim = tmp_path / "sim"
    simulate(SimulatorConfig(users=60, items=300, days=1, domains=2, seed=3), sim)
    spec = BatchSpec(max_len=32, vocab_sizes={"item": 400, "category": 100, "action": 8, "domain": 4, "user": 100})
    write_artifact(tmp_path / "model", spec)
    data = load_replay_data(sim, ReplayConfig())
    pol = make_policy(f"ranker:{tmp_path / 'model'}@softmax(temperature=1.0)", data.cands)
    assert np.all(np.isfinite(pol.scores)) and pol.scores.std() > 0
    np.testing.assert_allclose(np.add.reduceat(pol.probs, data.cands.offsets[:-1]), 1.0, atol=1e-9)
    # reference: the point-in-time training table of the same logs, scored row by row with the full forward
    build_training_table(sim, tmp_path / "feat", load_feature_config(None, ["progress=false"]))
    rows = read_table(tmp_path / "feat", "training")
    model = load_exported(tmp_path / "model").model
    with torch.no_grad():
        ref = model(build_batch(rows, spec)).double().numpy()
    flat = data.cands.flat_index(rows["request_id"].to_numpy(), rows["item_id"].to_numpy())
    assert np.all(flat >= 0)
    np.testing.assert_allclose(pol.scores[flat], ref, atol=1e-4, rtol=1e-4)
