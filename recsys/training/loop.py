"""The train loop run by every worker (Ray Train worker, spawned process, or the `--no-ray` driver itself).

One function, `train_worker(job)`, so all launch modes run the identical code: join the process group, build the
model, shard it with DMP (tables model-parallel under the planner's plan, dense parts DDP), train with the fused
embedding optimizer + dense optimizer, evaluate each epoch and at the end, checkpoint every N steps with DCP.

Lockstep: sharded lookups are collectives, so every rank must run the same number of forwards. Training uses
all_reduce MIN over per-rank batch counts (the few rows past it are dropped for that epoch); evaluation uses MAX and
ranks that run out re-run their last batch and discard the result, so every validation row is scored exactly once.

Resume (`--resume`): model, optimizer state, step, data position (epoch + batch index of the seeded permutation)
and every rank's RNG come back, so a resumed run with the same worker count replays exactly the batches and losses
of an uninterrupted one (tested). With another worker count the checkpoint reshards, the RNGs are re-seeded, the
step budget is recomputed for the new global batch, and the interrupted epoch continues at the same batch index
under the new partition (some of that epoch's rows may repeat or be skipped).

Data: every rank maps one copy of the cut, time-sorted training table, which rank 0 writes to RUN_DIR/table_cache/
(recsys/training/data.py::shared_training_table) and removes after DONE; a killed run keeps it for --resume.

Progress: rank 0 appends JSON lines to RUN_DIR/metrics.jsonl:
  {"kind": "train", "step", "epoch", "loss", "lr", "grad_norm_max", "examples_per_s", "time"}   every log_every_steps
  (grad_norm_max: the largest dense-gradient norm of the window, before optional clipping)
  {"kind": "eval", "step", "epoch", "final", "overall": {auc, gauc, logloss, n, ctr}, "per_domain": {d: {...}}}
The driver tails that file for its progress bar (Ray workers only log plain lines). The final evaluation also
writes RUN_DIR/predictions.parquet (request_id, ts, user_id, item_id, domain, label, logit per validation row),
for paired model comparisons (benchmarks/bench_quality.py bootstraps AUC differences from it).

Batches: with data.length_bucketing > 0 each epoch's permutation is length-bucketed (recsys/training/data.py), so a
batch is padded to a length close to its rows' own; evaluation scores rows sorted by length for the same reason.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recsys.allocator import tune_malloc
from recsys.data.batch import BatchSpec, RankingBatch
from recsys.models.base import Ranker
from recsys.models.registry import build_model
from recsys.training import checkpoint as ckpt
from recsys.training import data as tdata
from recsys.training.config import TrainConfig, check_device_support, resolve_device
from recsys.training.distributed import (
    DistContext,
    all_reduce_int,
    all_reduce_mean,
    barrier,
    gather_to_main,
    init_distributed,
    shutdown,
)
from recsys.training.item_init import initialise_items
from recsys.training.optimizers import apply_embedding_optimizer, clip_dense_gradients, lr_factor, make_dense_optimizer

METRICS_FILE = "metrics.jsonl"
PREDICTIONS_FILE = "predictions.parquet"  # final validation predictions (written by rank 0)
TABLE_CACHE_DIR = "table_cache"  # the mapped training table (recsys/training/data.py::shared_training_table)


def log(ctx: DistContext | None, msg: str) -> None:
    if ctx is None or ctx.is_main:
        print(f"[train] {msg}", flush=True)


# -- model -----------------------------------------------------------------------------------------------------
def build_training_model(cfg: TrainConfig, spec: BatchSpec) -> Ranker:
    """The registry's model with the trainer's activation-checkpointing flag handed to it when it supports it:
    either a model-config field `activation_checkpointing` or a model method `set_activation_checkpointing(bool)`."""
    mcfg = cfg.model
    if cfg.activation_checkpointing and "activation_checkpointing" in type(mcfg).model_fields:
        mcfg = mcfg.model_copy(update={"activation_checkpointing": True})
    model = build_model(mcfg, spec)
    if cfg.activation_checkpointing and "activation_checkpointing" not in type(mcfg).model_fields:
        setter = getattr(model, "set_activation_checkpointing", None)
        if setter is None:
            print(f"[train] warning: model {mcfg.name!r} does not support activation checkpointing; flag ignored", flush=True)
        else:
            setter(True)
    return model


def shard_for_training(model: nn.Module, cfg: TrainConfig, device: torch.device):
    """Apply the fused embedding optimizer, shard with DMP, and build the combined (fused + dense) optimizer."""
    from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
    from torchrec.optim.optimizers import in_backward_optimizer_filter

    from recsys.training.sharding import shard

    apply_embedding_optimizer(model, cfg.optimizer)
    dmp = shard(model, cfg.sharding, device, cfg.data.batch_size)
    plan = dmp.plan
    dense_params = dict(in_backward_optimizer_filter(dmp.named_parameters()))
    opts: list[Any] = [dmp.fused_optimizer]
    dense = None
    if dense_params:
        dense = KeyedOptimizerWrapper(dense_params, lambda ps: make_dense_optimizer(list(ps), cfg.optimizer))
        opts.append(dense)
    return dmp, CombinedOptimizer(opts), dense, plan


# -- evaluation --------------------------------------------------------------------------------------------------
def compute_metrics(logits: np.ndarray, labels: np.ndarray, users: np.ndarray, domains: np.ndarray) -> dict[str, Any]:
    """AUC, GAUC (per user), logloss overall and per domain, from recsys.evaluation.metrics."""
    from recsys.evaluation import metrics as M

    def block(sel: np.ndarray) -> dict[str, Any]:
        y, s, u = labels[sel], logits[sel], users[sel]
        p = 1.0 / (1.0 + np.exp(-s.astype(np.float64)))
        one_class = y.min() == y.max() if len(y) else True
        return {
            "n": int(len(y)),
            "ctr": float(y.mean()) if len(y) else float("nan"),
            "auc": float("nan") if one_class else float(M.auc(y, s)),
            "gauc": float(M.gauc(u, y, s)) if len(y) else float("nan"),
            "logloss": float(M.logloss(y, p)) if len(y) else float("nan"),
        }

    everything = np.ones(len(labels), dtype=bool)
    return {
        "overall": block(everything),
        "per_domain": {str(int(d)): block(domains == d) for d in np.unique(domains)},
    }


@torch.no_grad()
def evaluate(
    model: nn.Module, table, ctx: DistContext, spec: BatchSpec, cfg: TrainConfig, predictions: Path | None = None
) -> dict[str, Any] | None:
    """Score this rank's share of the validation table in lockstep; metrics on rank 0 (None elsewhere).

    Rows are scored in order of history length (metrics do not depend on the order; padding does). With
    `predictions`, rank 0 also writes one row per validation impression (its key columns, label and logit)."""
    model.eval()
    rows = np.arange(table.num_rows)[ctx.rank :: ctx.world_size]
    rows = rows[np.argsort(tdata.history_lengths(table, spec.max_len)[rows], kind="stable")]
    bs = cfg.data.eval_batch_size
    mine = tdata.num_batches(len(rows), bs, drop_last=False)
    total = all_reduce_int(mine, "max", ctx.device)
    out: dict[str, list[np.ndarray]] = {"logits": [], "labels": [], "users": [], "domains": [], "rows": []}
    it = tdata.iter_batches(table, rows, spec, bs, drop_last=False)
    last: RankingBatch | None = None
    if mine == 0 and total > 0:  # this rank has no rows: run a borrowed row to keep the collectives aligned
        last = next(tdata.iter_batches(table, np.arange(min(1, table.num_rows)), spec, 1, drop_last=False))
    for b in range(total):
        real = b < mine
        batch = next(it) if real else last
        assert batch is not None
        last = batch
        with _autocast(cfg, ctx.device):
            logits = model(batch.to(ctx.device))
        if real:
            out["logits"].append(logits.float().cpu().numpy())
            out["labels"].append(batch.labels.numpy())
            out["users"].append(batch.user_id.numpy())
            out["domains"].append(batch.domain.numpy())
            out["rows"].append(rows[b * bs : b * bs + batch.batch_size])
    model.train()
    local = {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in out.items()}
    gathered = gather_to_main(local)
    if gathered is None:
        return None
    allv = {k: np.concatenate([g[k] for g in gathered]) for k in local}
    if len(allv["labels"]) == 0:
        return {"overall": {"n": 0}, "per_domain": {}}
    if predictions is not None:
        write_predictions(predictions, table, allv["rows"].astype(np.int64), allv["logits"])
    return compute_metrics(allv["logits"], allv["labels"], allv["users"], allv["domains"])


PREDICTION_KEYS = ["request_id", "ts", "user_id", "item_id", "domain", "label"]


def write_predictions(path: Path, table, rows: np.ndarray, logits: np.ndarray) -> None:
    """Validation predictions in table order: key columns + `logit` (atomic write; for paired comparisons)."""
    import pyarrow as pa

    from recsys.data.io import atomic_write

    order = np.argsort(rows, kind="stable")
    keys = table.select([c for c in PREDICTION_KEYS if c in table.column_names]).take(pa.array(rows[order]))
    atomic_write(keys.append_column("logit", pa.array(logits[order].astype(np.float32))), path)


def _autocast(cfg: TrainConfig, device: torch.device):
    if cfg.precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


# -- training ----------------------------------------------------------------------------------------------------
def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    with open(run_dir / METRICS_FILE, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def train_worker(job: dict[str, Any]) -> dict[str, Any] | None:
    """Entry point of every worker. `job`: config (TrainConfig as dict), spec (BatchSpec fields), files (training
    table parquet paths), run_dir, resume (bool). Returns the final record on rank 0."""
    cfg = TrainConfig.model_validate(job["config"])
    spec = BatchSpec(max_len=job["spec"]["max_len"], vocab_sizes=dict(job["spec"]["vocab_sizes"]))
    run_dir = Path(job["run_dir"])
    device = resolve_device(cfg)
    check_device_support(cfg, device)
    ctx = init_distributed(device)
    try:
        return _train(cfg, spec, run_dir, [Path(f) for f in job["files"]], bool(job.get("resume")), ctx)
    finally:
        shutdown(ctx)


def _train(cfg: TrainConfig, spec: BatchSpec, run_dir: Path, files: list[Path], resume: bool, ctx: DistContext):
    device = ctx.device
    threads = int(os.environ.get("RECSYS_THREADS_PER_WORKER", "0"))  # set by the Ray launcher: cores / workers
    if threads > 0:
        torch.set_num_threads(threads)
    tune_malloc()  # large activations reuse heap pages instead of mmap/munmap per step (recsys/allocator.py)
    seed_everything(cfg.seed)  # same on every rank: identical dense init (DDP also broadcasts rank 0's)
    table = tdata.shared_training_table(files, spec.max_len, run_dir / TABLE_CACHE_DIR, ctx.is_main, barrier)
    split = tdata.time_split(table, cfg.data)
    if split.train.num_rows == 0:
        raise ValueError("data.validation_fraction/validation_start: the time split leaves no training rows")
    latest = ckpt.latest_checkpoint(run_dir) if resume else None
    model = build_training_model(cfg, spec)
    if latest is None:  # a resumed run loads its trained table instead
        t0 = time.perf_counter()
        rows = initialise_items(model, files, split.boundary_ms, cfg.item_init)  # 0 rows with method random
        if rows:
            log(ctx, f"item_init={cfg.item_init.method}: {rows} item rows from the training histories "
                     f"({time.perf_counter() - t0:.1f}s)")
    dmp, optimizer, dense, plan = shard_for_training(model, cfg, device)
    from recsys.training.sharding import plan_summary

    log(ctx, f"world_size={ctx.world_size} device={device} plan={plan_summary(plan)}")

    n_train = split.train.num_rows
    train_lengths = tdata.history_lengths(split.train, spec.max_len) if cfg.data.length_bucketing else None
    per_epoch = all_reduce_int(len(tdata.rank_rows(n_train, ctx.rank, ctx.world_size, cfg.seed, 0, False)) // cfg.data.batch_size, "min", device)
    if per_epoch == 0:
        raise ValueError(f"data.batch_size: {cfg.data.batch_size} x {ctx.world_size} workers exceeds the {n_train} training rows")
    total_steps = per_epoch * cfg.epochs
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    log(ctx, f"train rows={n_train} validation rows={split.validation.num_rows} steps/epoch={per_epoch} total_steps={total_steps}")

    step, epoch, batch_in_epoch = 0, 0, 0
    if latest is not None:
        if dense is not None:
            dense.init_state()  # optimizer state must exist for DCP to load into it (overwritten by the load)
        model_sd, optim_sd = dmp.state_dict(), optimizer.state_dict()
        meta = ckpt.load(latest, model_sd, optim_sd)
        dmp.load_state_dict(model_sd)
        optimizer.load_state_dict(optim_sd)
        step, epoch, batch_in_epoch = meta["step"], meta["epoch"], meta["batch_in_epoch"]
        if meta["rng"] is not None:
            ckpt.set_rng_state(meta["rng"])
        else:
            seed_everything(cfg.seed + 7919 * step + ctx.rank)
        log(ctx, f"resumed from {latest.name}: step={step} epoch={epoch} batch={batch_in_epoch}")
    elif resume:
        log(ctx, "no checkpoint found: starting from scratch")

    final: dict[str, Any] | None = None
    saved_step = step if latest is not None else -1
    evaluated_end = False  # same value on every rank (evaluation is collective)
    t_last, ex_last, loss_acc, n_acc, grad_norm_max = time.perf_counter(), 0, 0.0, 0, 0.0
    while step < total_steps and epoch < cfg.epochs:
        rows = tdata.rank_rows(n_train, ctx.rank, ctx.world_size, cfg.seed, epoch, cfg.data.shuffle,
                               train_lengths, cfg.data.batch_size, cfg.data.length_bucketing)
        stop = min(per_epoch, batch_in_epoch + (total_steps - step))
        batches = tdata.iter_batches(split.train, rows, spec, cfg.data.batch_size, start=batch_in_epoch)
        for b in range(batch_in_epoch, stop):
            batch = next(batches).to(device)
            factor = lr_factor(step, cfg.optimizer, total_steps)
            if dense is not None:
                for g in dense.param_groups:
                    g.setdefault("initial_lr", cfg.optimizer.lr)
                    g["lr"] = cfg.optimizer.lr * factor
            with _autocast(cfg, device):
                logits, aux = dmp(batch, return_aux=True)
            loss = F.binary_cross_entropy_with_logits(logits.float(), batch.labels) + aux.float()
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {step} (epoch {epoch}, batch {b})")
            optimizer.zero_grad()
            loss.backward()
            grad_norm_max = max(grad_norm_max, clip_dense_gradients(dense, cfg.optimizer.grad_clip_norm))
            optimizer.step()
            step += 1
            batch_in_epoch = b + 1
            loss_acc += float(loss.detach())
            n_acc += 1
            ex_last += batch.batch_size
            if step % cfg.log_every_steps == 0 or step == total_steps:
                mean_loss, = all_reduce_mean([loss_acc / n_acc], device)
                now = time.perf_counter()
                eps = ex_last * ctx.world_size / max(now - t_last, 1e-9)
                if ctx.is_main:
                    append_metrics(run_dir, {"kind": "train", "step": step, "epoch": epoch, "loss": mean_loss,
                                             "lr": cfg.optimizer.lr * factor, "grad_norm_max": grad_norm_max,
                                             "examples_per_s": eps, "time": time.time(),
                                             "total_steps": total_steps, "world_size": ctx.world_size})
                t_last, ex_last, loss_acc, n_acc, grad_norm_max = now, 0, 0.0, 0, 0.0
            if step % cfg.checkpoint_every_steps == 0 and step < total_steps:
                _save(run_dir, step, epoch, batch_in_epoch, dmp, optimizer, cfg, ctx)
                saved_step = step
                t_last = time.perf_counter()
        if batch_in_epoch >= per_epoch:
            end_of_epoch = True
            epoch, batch_in_epoch = epoch + 1, 0
        else:
            end_of_epoch = False
        if end_of_epoch or step >= total_steps:
            evaluated_end = step >= total_steps
            res = evaluate(dmp, split.validation, ctx, spec, cfg, run_dir / PREDICTIONS_FILE if evaluated_end else None)
            if ctx.is_main and res is not None:
                final = {"kind": "eval", "step": step, "epoch": epoch - 1 if end_of_epoch else epoch,
                         "final": step >= total_steps, "time": time.time(), **res}
                append_metrics(run_dir, final)
                log(ctx, f"eval step={step}: auc={res['overall'].get('auc', float('nan')):.4f} logloss={res['overall'].get('logloss', float('nan')):.4f}")
            t_last = time.perf_counter()
    if not evaluated_end:  # resumed at the very end (killed after the last step, before its eval): evaluate now
        res = evaluate(dmp, split.validation, ctx, spec, cfg, run_dir / PREDICTIONS_FILE)
        if ctx.is_main and res is not None:
            final = {"kind": "eval", "step": step, "epoch": epoch, "final": True, "time": time.time(), **res}
            append_metrics(run_dir, final)
    if saved_step != step:
        _save(run_dir, step, epoch, batch_in_epoch, dmp, optimizer, cfg, ctx)
    if ctx.is_main:
        (run_dir / "DONE").write_text(json.dumps({"step": step, "total_steps": total_steps}))
    barrier()
    if ctx.is_main:  # kept until here so that a crashed run resumes without re-reading; mapped pages outlive the unlink
        shutil.rmtree(run_dir / TABLE_CACHE_DIR, ignore_errors=True)
    return final if ctx.is_main else None


def _save(run_dir, step, epoch, batch_in_epoch, dmp, optimizer, cfg: TrainConfig, ctx: DistContext) -> None:
    t = time.perf_counter()
    d = ckpt.save(run_dir, step, dmp.state_dict(), optimizer.state_dict(),
                  {"epoch": epoch, "batch_in_epoch": batch_in_epoch}, keep=cfg.keep_checkpoints)
    log(ctx, f"checkpoint {d.name} ({time.perf_counter() - t:.2f}s)")


__all__ = ["train_worker", "build_training_model", "shard_for_training", "evaluate", "compute_metrics"]
