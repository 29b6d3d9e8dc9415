"""Ray Train builds the process group before it loads our train function, so the trainer's import-order guard
(recsys/training/distributed.py: torch.distributed.optim binds the live group as a default argument when imported
after it exists) must run at worker start, through the job's worker_process_setup_hook. Checked on real Ray Train
workers with the runtime env `recsys train` uses; without the hook the default holds the group."""
from __future__ import annotations

import shutil
import tempfile


def _zero_default_holds_group(config) -> bool:
    import torch.distributed.optim.zero_redundancy_optimizer as zero

    return zero._broadcast_object.__defaults__[0] is not None


def test_ray_train_workers_import_torch_optim_before_the_group(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("RAY_TRAIN_V2_ENABLED", "1")
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from pipelines.train_ranker import ray_runtime_env

    temp = tempfile.mkdtemp(prefix="rt-")  # Ray's unix socket paths must stay < 108 bytes
    ray.init(num_cpus=4, _temp_dir=temp, include_dashboard=False, log_to_driver=False, runtime_env=ray_runtime_env(1))
    try:
        result = TorchTrainer(
            _zero_default_holds_group,
            torch_config=TorchConfig(backend="gloo"),
            scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
            run_config=RunConfig(storage_path=str(tmp_path)),
        ).fit()
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
    assert result.return_value is False  # rank 0's return value
