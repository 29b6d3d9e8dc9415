"""Functions run in spawned gloo processes by the multi-process trainer tests (importable by the children)."""
from __future__ import annotations

import copy
import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from recsys.config import dump_config
from recsys.data.batch import BatchSpec, build_batch
from recsys.training import checkpoint as ckpt
from recsys.training.config import TrainConfig
from recsys.training.data import find_table_files, read_training
from recsys.training.distributed import release_group
from recsys.training.loop import build_training_model, shard_for_training
from recsys.training.sharding import plan_summary


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, fn_name: str, kwargs: dict[str, Any]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=dt.timedelta(seconds=120))
    try:
        globals()[fn_name](rank=rank, world=world, **kwargs)
        dist.barrier()  # no rank tears gloo down while another still has a collective in flight
    finally:
        release_group()


def spawn(world: int, fn_name: str, **kwargs: Any) -> None:
    """Run `fn_name(rank=, world=, **kwargs)` in `world` gloo processes; raises if any fails."""
    mp.start_processes(_entry, args=(world, free_port(), fn_name, kwargs), nprocs=world, join=True, start_method="spawn")


def train_config(sharding: str, **over: Any) -> TrainConfig:
    d: dict[str, Any] = {
        "model": {"name": "pooling", "embedding": {"dim": 16}, "hidden": [32]},
        "data": {"batch_size": 32, "max_len": 16},
        "sharding": {"sharding_types": [sharding]},
        "device": "cpu",
    }
    d.update(over)
    return TrainConfig.model_validate(d)


def worker_job(cfg: TrainConfig, spec: dict, data_dir: str | Path, run_dir: Path) -> dict[str, Any]:
    """The job dict `train_worker` takes, as pipelines/train_ranker.prepare_run builds it (run dir with config.yaml and
    batch_spec.json, so the run can be exported), over the training table in DATA_DIR."""
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, run_dir / "config.yaml")
    (run_dir / "batch_spec.json").write_text(json.dumps(spec))
    return {"config": cfg.model_dump(mode="json"), "spec": spec, "files": [str(p) for p in find_table_files(data_dir)],
            "run_dir": str(run_dir), "resume": False}


def eval_rows(data_dir: str, n: int = 48):
    return read_training(find_table_files(data_dir)).slice(0, n)


# -- sharded forward == unsharded forward -------------------------------------------------------------------------
def sharded_forward(rank: int, world: int, data_dir: str, spec: dict, out: str) -> None:
    spec_o = BatchSpec(**spec)
    rows = eval_rows(data_dir, 64)
    mine = build_batch(rows.take(np.arange(rank, rows.num_rows, world)), spec_o)
    report = {}
    for st in ("row_wise", "table_wise", "column_wise"):
        cfg = train_config(st)
        torch.manual_seed(0)
        model = build_training_model(cfg, spec_o)
        plain = copy.deepcopy(model)
        dmp, _opt, _dense, plan = shard_for_training(model, cfg, torch.device("cpu"))
        types = set(plan_summary(plan).values())
        assert types == {st}, f"asked for {st}, planner chose {types}"
        sd = dmp.state_dict()
        ckpt.copy_full_state_dict(sd, plain.state_dict())
        dmp.load_state_dict(sd)
        with torch.no_grad():
            want = plain(mine)
            got = dmp(mine)
        report[st] = float((want - got).abs().max())
    torch.save(report, Path(out) / f"report_{rank}.pt")


# -- checkpoint resharding --------------------------------------------------------------------------------------
def train_then_logits(rank: int, world: int, job: dict, **kwargs: Any) -> None:
    """Train via the real worker function, then score from its latest checkpoint under another plan."""
    from recsys.training.loop import train_worker

    train_worker(job)
    logits_from_checkpoint(rank, world, run_dir=job["run_dir"], **kwargs)


def logits_from_checkpoint(rank: int, world: int, run_dir: str, data_dir: str, spec: dict, sharding: str, out: str,
                           save_to: str | None = None) -> None:
    """Load RUN_DIR's latest checkpoint into a fresh DMP of this world size under `sharding`; rank r scores rows
    r::world of the eval rows; rank 0 writes all logits in row order. Optionally re-save under this plan."""
    spec_o = BatchSpec(**spec)
    cfg = train_config(sharding)
    torch.manual_seed(123)  # different init: the load must overwrite every weight
    model = build_training_model(cfg, spec_o)
    dmp, opt, dense, plan = shard_for_training(model, cfg, torch.device("cpu"))
    assert set(plan_summary(plan).values()) == {sharding}
    latest = ckpt.latest_checkpoint(run_dir)
    assert latest is not None
    if dense is not None:
        dense.init_state()
    msd, osd = dmp.state_dict(), opt.state_dict()
    meta = ckpt.load(latest, msd, osd)
    dmp.load_state_dict(msd)
    opt.load_state_dict(osd)
    rows = eval_rows(data_dir)
    idx = np.arange(rank, rows.num_rows, world)
    with torch.no_grad():
        logits = dmp(build_batch(rows.take(idx), spec_o)).numpy()
    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, (idx, logits))
    if rank == 0:
        full = np.zeros(rows.num_rows, np.float32)
        for i, lg in parts:
            full[i] = lg
        np.save(Path(out), full)
    if save_to is not None:
        ckpt.save(save_to, meta["step"], dmp.state_dict(), opt.state_dict(), {"epoch": meta["epoch"], "batch_in_epoch": meta["batch_in_epoch"]})


def train_steps_only(rank: int, world: int, job: dict) -> None:
    from recsys.training.loop import train_worker

    train_worker(job)


def train_expecting_value_error(rank: int, world: int, job: dict, out: str) -> None:
    """Run the real worker function; each rank writes the ValueError it raised to OUT/error_{rank}.txt."""
    from recsys.training.loop import train_worker

    try:
        train_worker(job)
    except ValueError as err:
        (Path(out) / f"error_{rank}.txt").write_text(str(err))


def thread_names() -> list[str]:
    """Names of this process's native threads (Linux /proc)."""
    names = []
    for t in os.listdir("/proc/self/task"):
        try:
            names.append(Path(f"/proc/self/task/{t}/comm").read_text().strip())
        except OSError:  # the thread ended while we listed
            pass
    return sorted(names)


def work_then_release(rank: int, world: int, work: str, threads_dir: str, **kwargs: Any) -> None:
    """Run helper `work` of this module, tear the process group down, and write the native threads still running to
    THREADS_DIR/threads_{rank}.json; then join a fresh group so the harness can tear down as usual."""
    globals()[work](rank=rank, world=world, **kwargs)
    dist.barrier()
    release_group()  # what the harness and the trainer's own shutdown do; no extra collection here
    (Path(threads_dir) / f"threads_{rank}.json").write_text(json.dumps(thread_names()))
    # a file store: a group that outlived its destroy would still hold the TCP port
    dist.init_process_group("gloo", store=dist.FileStore(str(Path(threads_dir) / "rejoin.store"), world), rank=rank,
                            world_size=world, timeout=dt.timedelta(seconds=120))


def lmn_row_wise_memory_steps(rank: int, world: int, out: str) -> None:
    """Three training steps of tests/models/test_lmn.py's LMN with its memory table row-wise sharded (through the
    trainer's own optimizer registration and DMP wrapping), ranks seeing different history lengths (so different
    numbers of memory reads); rank 0 writes the losses to `out`."""
    from recsys.training.config import OptimizerConfig, ShardingConfig
    from recsys.training.optimizers import apply_embedding_optimizer
    from recsys.training.sharding import shard
    from tests.models.ranking_rows import SPEC, random_rows
    from tests.models.test_lmn import _model

    model = _model()
    apply_embedding_optimizer(model, OptimizerConfig(embedding="rowwise_adagrad", embedding_lr=0.1))
    dmp = shard(model, ShardingConfig(tables={"t_lmn_memory": ["row_wise"]}), torch.device("cpu"), batch_size=16)
    assert plan_summary(dmp.plan)["t_lmn_memory"] == "row_wise"
    rows = random_rows(16, seed=rank, max_len=24 if rank == 0 else 9)
    losses = []
    for _ in range(3):
        batch = build_batch(rows, SPEC)
        logits, aux = dmp(batch, return_aux=True)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch.labels) + aux
        loss.backward()
        losses.append(float(loss))
    if rank == 0:
        Path(out).write_text(repr(losses))
