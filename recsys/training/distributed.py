"""Process-group setup for the trainer: gloo on CPU, NCCL on CUDA, and a world-size-1 path with no launcher.

Who creates the group: under Ray Train the framework has already initialised it (TorchConfig) before our worker
function runs; under torchrun/mp.spawn the env:// variables are set; with neither (`--no-ray`) we create a
one-rank gloo group on an in-memory store so DMP, DCP and the collectives run the identical code path.
"""
from __future__ import annotations

import datetime as dt
import gc
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

# Imported before any process group exists, on purpose: torch.distributed.optim's zero_redundancy_optimizer binds
# `dist.group.WORLD` as a default argument when first imported (torch 2.13), and TorchRec imports it while sharding.
# Imported after init_process_group, that default would keep the group alive forever (see `release_group`).
import torch.distributed.optim  # noqa: F401,E402


@dataclass
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool  # we created the process group, so we destroy it

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def init_distributed(device: torch.device, timeout_s: float = 600.0) -> DistContext:
    """Join (or create) the default process group and pick this rank's device."""
    owns = False
    if not dist.is_initialized():
        backend = backend_for(device)
        timeout = dt.timedelta(seconds=timeout_s)
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ:
            dist.init_process_group(backend, timeout=timeout)
        else:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
        owns = True
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=device, owns_group=owns)


def prepare_worker_process() -> None:
    """Ray's `worker_process_setup_hook` for training jobs (pipelines/train_ranker.py): Ray Train creates the process
    group before it loads our train function, so this module's torch.distributed.optim import must happen at worker
    start instead. Importing this module is the whole effect."""


def release_group() -> None:
    """Destroy the default process group now, with its gloo threads and rank 0's TCPStore server.

    destroy_process_group only drops the registry's reference; after sharded training, cyclic garbage still holds the
    group, so it used to live until the interpreter's final collection. Its gloo threads then freed finished work
    objects (tensors owned by Python) while Python shut down, and a thread that asked for the GIL aborted the process
    after a successful run (SIGABRT, "terminate called without an active exception": 1 in 210 spawned 2-rank test
    runs here, 0 in 400 with this fix; core dump: ~AsyncBarrierWork -> take_gil -> pthread_exit -> std::terminate).
    Collecting first frees the group while Python is alive. tests/training/test_process_group_release.py checks that
    the threads are gone."""
    gc.collect()
    dist.destroy_process_group()


def shutdown(ctx: DistContext) -> None:
    if ctx.owns_group and dist.is_initialized():
        release_group()
    else:  # the launcher (Ray Train) destroys its group: leave it nothing cyclic to keep alive
        gc.collect()


def all_reduce_int(value: int, op: str, device: torch.device) -> int:
    """MIN/MAX/SUM of one integer over all ranks (keeps ranks in lockstep over batch counts)."""
    t = torch.tensor([int(value)], dtype=torch.int64, device=device)
    dist.all_reduce(t, op={"min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX, "sum": dist.ReduceOp.SUM}[op])
    return int(t.item())


def all_reduce_mean(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return (t / dist.get_world_size()).tolist()


def gather_to_main(obj: Any) -> list[Any] | None:
    """Every rank's `obj` on rank 0 (None elsewhere)."""
    world = dist.get_world_size()
    if world == 1:
        return [obj]
    out: list[Any] | None = [None] * world if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_object(obj: Any) -> Any:
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    dist.barrier()
