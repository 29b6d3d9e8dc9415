"""Fast checks: config errors name the field, Adam on CPU is refused clearly, Adam++, the schedule and clipping behave."""
from __future__ import annotations

import pytest
import torch

from recsys.config import ConfigError, load_config, validate
from recsys.training.config import OptimizerConfig, TrainConfig, check_device_support
from recsys.training.optimizers import AdamPP, clip_dense_gradients, lr_factor

POOLING = {"name": "pooling"}


def test_pooling_yaml_is_a_valid_training_config():
    cfg = load_config(TrainConfig, "configs/pooling.yaml")
    assert cfg.model.name == "pooling" and cfg.optimizer.embedding == "rowwise_adagrad"


@pytest.mark.parametrize(
    "data, field",
    [
        ({"model": POOLING, "optimizer": {"lr_x": 1}}, "optimizer.lr_x"),
        ({"model": POOLING, "optimizer": {"dense": "sgd"}}, "optimizer.dense"),
        ({"model": POOLING, "sharding": {"sharding_types": ["data_parallel"]}}, "sharding.sharding_types"),
        ({"model": POOLING, "data": {"batch_size": 0}}, "data.batch_size"),
        ({"model": POOLING, "data": {"vocab_sizes": {"itme": 10}}}, "data.vocab_sizes"),
        ({"model": {"name": "nope"}}, "model"),
        ({"model": POOLING, "precision": "fp8"}, "precision"),
    ],
)
def test_config_errors_name_the_field(data, field):
    with pytest.raises(ConfigError) as e:
        validate(TrainConfig, data, "x.yaml")
    assert field in str(e.value) and "x.yaml" in str(e.value)


def test_adam_embedding_optimizer_refused_on_cpu():
    with pytest.raises(ConfigError, match="optimizer.embedding: 'adam' needs CUDA"):
        validate(TrainConfig, {"model": POOLING, "device": "cpu", "optimizer": {"embedding": "adam"}})
    cfg = validate(TrainConfig, {"model": POOLING, "optimizer": {"embedding": "adam"}})  # device auto: checked at start
    with pytest.raises(ConfigError, match="optimizer.embedding: 'adam' needs CUDA"):
        check_device_support(cfg, torch.device("cpu"))
    check_device_support(cfg, torch.device("cuda"))  # allowed where FBGEMM has the kernel


def test_run_training_refuses_adam_on_cpu_before_starting(tmp_path, train_data):
    from pipelines.train_ranker import run_training

    if torch.cuda.is_available():
        pytest.skip("CUDA present: adam is allowed")
    with pytest.raises(ConfigError, match="optimizer.embedding"):
        run_training("configs/pooling.yaml", train_data, tmp_path / "run", use_ray=False, overrides=["optimizer.embedding=adam"])
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_sharding_table_override_must_name_a_model_table():
    from recsys.data.batch import BatchSpec
    from recsys.training.loop import build_training_model
    from recsys.training.sharding import constraints

    cfg = validate(TrainConfig, {"model": POOLING, "sharding": {"tables": {"t_nope": ["row_wise"]}}})
    model = build_training_model(cfg, BatchSpec(max_len=4, vocab_sizes={"item": 10, "category": 3, "action": 2, "domain": 2, "user": 5}))
    with pytest.raises(ConfigError, match=r"sharding.tables: unknown table\(s\) \['t_nope'\]"):
        constraints(model, cfg.sharding)


def test_warmup_cosine_schedule():
    cfg = OptimizerConfig(warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, cfg, 110) == pytest.approx(0.1)
    assert lr_factor(9, cfg, 110) == pytest.approx(1.0)
    assert lr_factor(10, cfg, 110) == pytest.approx(1.0)
    assert lr_factor(60, cfg, 110) == pytest.approx(0.55)
    assert lr_factor(110, cfg, 110) == pytest.approx(0.1)
    assert lr_factor(500, cfg, 110) == pytest.approx(0.1)


def test_clip_dense_gradients_caps_the_global_norm_and_reports_it():
    torch.manual_seed(0)
    a, b, idle = (torch.nn.Parameter(torch.randn(n)) for n in (3, 4, 2))
    opt = torch.optim.AdamW([{"params": [a]}, {"params": [b, idle]}])  # idle: no gradient this step
    ga, gb = torch.tensor([3.0, 0.0, 4.0]), torch.tensor([0.0, 12.0, 0.0, 0.0])  # global norm 13
    a.grad, b.grad = ga.clone(), gb.clone()
    assert clip_dense_gradients(opt, None) == pytest.approx(13.0)
    assert torch.equal(a.grad, ga) and torch.equal(b.grad, gb)  # no cap: untouched
    assert clip_dense_gradients(opt, 100.0) == pytest.approx(13.0)
    assert torch.equal(a.grad, ga)  # under the cap: untouched
    assert clip_dense_gradients(opt, 1.3) == pytest.approx(13.0)
    torch.testing.assert_close(a.grad, ga / 10, rtol=1e-5, atol=0)  # one scale for every group
    torch.testing.assert_close(b.grad, gb / 10, rtol=1e-5, atol=0)
    assert idle.grad is None
    assert clip_dense_gradients(None, 1.0) == 0.0  # a model without dense parameters


def test_adam_pp_step_size_grows_and_solves_least_squares():
    torch.manual_seed(0)
    A, b = torch.randn(64, 16), torch.randn(64)
    x = torch.zeros(16, requires_grad=True)
    opt = AdamPP([x], lr=1e-4)  # tiny eta_0: Adam++ must grow it from the distance travelled
    first = None
    etas = []
    for _ in range(600):
        loss = ((A @ x - b) ** 2).mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
        etas.append(opt.param_groups[0]["eta"])
    best = torch.linalg.lstsq(A, b.unsqueeze(1)).solution.squeeze(1)
    opt_loss = ((A @ best - b) ** 2).mean().item()
    assert all(e2 >= e1 for e1, e2 in zip(etas, etas[1:]))
    assert etas[-1] > 100 * 1e-4
    assert loss.item() - opt_loss < 0.05 * (first - opt_loss)
    # state round-trips (checkpointing)
    sd = opt.state_dict()
    opt2 = AdamPP([x.detach().clone().requires_grad_()], lr=1e-4)
    opt2.load_state_dict(sd)
    assert opt2.param_groups[0]["eta"] == opt.param_groups[0]["eta"]


def test_resume_config_rules(tmp_path):
    from pipelines.train_ranker import _load_config
    from recsys.config import dump_config

    saved = load_config(TrainConfig, "configs/pooling.yaml", ["epochs=3"])
    dump_config(saved, tmp_path / "config.yaml")
    # no --config: the saved one, --set still applies
    assert _load_config(None, tmp_path, True, ["epochs=5"]).epochs == 5
    assert _load_config(None, tmp_path, True, None).epochs == 3
    # --config with the same model block: accepted (trainer knobs may change)
    assert _load_config("configs/pooling.yaml", tmp_path, True, ["epochs=4"]).epochs == 4
    with pytest.raises(ConfigError, match="model block"):
        _load_config("configs/pooling.yaml", tmp_path, True, ["model.hidden=[8]"])
    with pytest.raises(ConfigError, match="--config is required"):
        _load_config(None, tmp_path / "new", False, None)
