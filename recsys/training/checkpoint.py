"""Checkpoints with torch.distributed.checkpoint (DCP): sharded model + optimizer state, written by every rank.

Layout under RUN_DIR/checkpoints/:
  step_00000200/            DCP files (.metadata + one __R_0.distcp per rank) and meta.json (written last)
  latest                    text file naming the newest complete step dir; replaced atomically (os.replace)
meta.json holds the training position: step, epoch, batch index inside the epoch (the data order is a seeded
permutation, so this is the exact data position), world size, and the RNG states of every rank (rng.pt).

Why DCP: each rank writes only its shards, and a checkpoint loads into a different world size or sharding plan
(DCP reshards on load: STACK.md), which is also how `export` reads the unsharded weights without a process group.
A directory is only named by `latest` after every rank finished writing and meta.json exists, so a crash mid-save
leaves the previous checkpoint in charge.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

CKPT_DIR = "checkpoints"
LATEST = "latest"


def ckpt_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / CKPT_DIR


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The directory `latest` points to, or None when the run has no complete checkpoint."""
    p = ckpt_root(run_dir) / LATEST
    if not p.exists():
        return None
    d = ckpt_root(run_dir) / p.read_text().strip()
    if not (d / "meta.json").exists():
        raise FileNotFoundError(f"{p} names {d.name}, which has no meta.json (incomplete checkpoint)")
    return d


def read_meta(ckpt: Path) -> dict[str, Any]:
    return json.loads((ckpt / "meta.json").read_text())


def rng_state() -> dict[str, Any]:
    st = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save(
    run_dir: str | Path,
    step: int,
    model_state: dict[str, Any],
    optim_state: dict[str, Any] | None,
    position: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Collective: every rank calls this with its own (sharded) state dicts."""
    rank, world = dist.get_rank(), dist.get_world_size()
    root = ckpt_root(run_dir)
    name = f"step_{step:08d}"
    d = root / name
    if rank == 0:
        if d.exists():  # a crashed earlier attempt at the same step (never pointed to by `latest`)
            shutil.rmtree(d)
        d.mkdir(parents=True)
    dist.barrier()
    state: dict[str, Any] = {"model": model_state}
    if optim_state is not None:
        state["optim"] = optim_state
    dcp.save(state, checkpoint_id=str(d))
    rngs: list[Any] | None = [None] * world if rank == 0 else None
    if world > 1:
        dist.gather_object(rng_state(), rngs, dst=0)
    else:
        rngs = [rng_state()]
    if rank == 0:
        torch.save(rngs, d / "rng.pt")
        meta = {"step": step, "world_size": world, "has_optim": optim_state is not None, **position}
        _atomic_write_text(d / "meta.json", json.dumps(meta))
        _atomic_write_text(root / LATEST, name)
        _prune(root, keep, current=name)
    dist.barrier()
    return d


def _prune(root: Path, keep: int, current: str) -> None:
    steps = sorted(p for p in root.glob("step_*") if p.is_dir() and (p / "meta.json").exists())
    for p in steps[:-keep]:
        if p.name != current:
            shutil.rmtree(p, ignore_errors=True)


def load(ckpt: Path, model_state: dict[str, Any], optim_state: dict[str, Any] | None) -> dict[str, Any]:
    """Collective: fill the given (sharded) state dicts in place from `ckpt`; returns meta.json plus this rank's
    RNG state under "rng" when the world size matches (else None: the caller reseeds)."""
    meta = read_meta(ckpt)
    state: dict[str, Any] = {"model": model_state}
    if optim_state is not None and meta.get("has_optim", True):
        state["optim"] = optim_state
    dcp.load(state, checkpoint_id=str(ckpt))
    rngs = torch.load(ckpt / "rng.pt", weights_only=False)
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    meta["rng"] = rngs[rank] if len(rngs) == world else None
    return meta


def load_model_only(ckpt: Path, model_state: dict[str, Any]) -> None:
    """Fill a plain (unsharded) state dict from a sharded checkpoint in this process, no process group needed."""
    dcp.load({"model": model_state}, checkpoint_id=str(ckpt), no_dist=True)


def copy_full_state_dict(target: dict[str, Any], full: dict[str, torch.Tensor]) -> None:
    """Copy full (unsharded) tensors into a DMP state dict in place: each rank copies the rows/columns its local
    shards cover. Used to give a sharded model the exact weights of a plain one (warm start, equality tests)."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor
    from torch.distributed.tensor import DTensor

    missing = sorted(set(target) - set(full))
    if missing:
        raise KeyError(f"full state dict lacks {missing[:5]}{'...' if len(missing) > 5 else ''}")
    with torch.no_grad():
        for k, t in target.items():
            src = full[k]
            if isinstance(t, ShardedTensor):
                for sh in t.local_shards():
                    sl = tuple(slice(o, o + s) for o, s in zip(sh.metadata.shard_offsets, sh.metadata.shard_sizes))
                    sh.tensor.copy_(src[sl])
            elif isinstance(t, DTensor):
                from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

                shape, offset = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)
                sl = tuple(slice(o, o + s) for o, s in zip(offset, shape))
                t.to_local().copy_(src[sl])
            else:
                t.copy_(src)
