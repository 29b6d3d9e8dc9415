"""Initialise the item table from co-engagement in the training split's histories, before CTR training starts.

Why: one pass over impressions (670k at 5% CTR, ~33k training clicks, on the concurrent-topics benchmark data)
teaches every ranker's item table popularity and coarse category geometry, but nothing about which items within a
category go together (benchmarks/bench_item_geometry.py: within-category R^2 0.006 for every model, chance 0.011),
and target attention can only weigh history events by relevance to the candidate as well as the item embeddings know
it. The users' engaged histories carry far more of that signal (2.5M engaged events against 33k clicked impressions).

Method: item2vec as a matrix factorisation. Skip-gram with negative sampling factorises a shifted PMI matrix of
co-occurrence counts (Levy & Goldberg, NIPS'14); we factor the positive PMI directly with a randomised truncated
SVD (`torch.svd_lowrank`, works on a sparse matrix, so catalogues of millions of items fit):
  counts   C[i, j] = number of times items i != j are engaged within `window` events of each other in a user's
           history (both orders; impressions are not engagement and are skipped, and the like / share / purchase
           that follows a click on the same item is the same engagement)
  PPMI     max(0, log(C[i, j] * total / (row_i * row_j))) on the non-zeros
  vectors  U[:, s:s+d] * S^power (Levy, Goldberg & Dagan, TACL'15: the eigenvalue weighting `power` 0 or 0.5 beats
           the SVD's natural 1 on similarity tasks); the first `drop_top` components are dropped: the top one is the
           shared popularity direction (its singular value is 5x the next on simulator data) that makes every pair of
           popular items look alike (Mu & Viswanath, ICLR'18, "all-but-the-top").
  scale    rows rescaled so that the engaged items' mean row norm is `norm` (trained item rows sit near 1: 0.8-1.4 after
           one pass on simulator data); items never engaged keep the table's random init.
Source: for each user, the stored history of the user's newest training row (so only events before the validation
boundary: no holdout leakage), read from the files at the length the feature pipeline stored (not cut to the
models' max_len); a user with more events than the pipeline keeps contributes the newest of them.
Measured (concurrent-topics simulator, 12000 users; benchmarks/bench_item_geometry.py --features, README): attention
over these vectors (d=32, defaults) finds R^2 +0.139 of the true click logit beyond recency means + category shares,
about what the true item factors find (+0.146; the trained rankers' own tables: +0.024..0.051). After one pass of CTR
training the table keeps part of it, and truth AUC moves by -0.0005..+0.0007 (bench_quality): off by default.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.distributed as dist
from pydantic import Field

from recsys.config import StrictModel
from recsys.data.schemas import TRAINING, Action
from recsys.models.base import Ranker
from recsys.training.distributed import broadcast_object


class ItemInitConfig(StrictModel):
    method: Literal["random", "co_engagement"] = Field(
        "random", description="random = TorchRec's init; co_engagement = PPMI + SVD of history co-engagement"
    )
    window: int = Field(20, gt=0, description="events either side within which two engaged items co-occur")
    power: float = Field(0.0, ge=0.0, le=1.0, description="singular-value weighting S^power of the vectors")
    drop_top: int = Field(1, ge=0, description="leading SVD components dropped (the popularity direction)")
    norm: float = Field(1.0, gt=0, description="mean row norm of the initialised rows")
    seed: int = Field(0, description="seed of the randomised SVD")


def newest_row_per_user(users: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Index of each user's newest row, users ascending; among rows tied in time the last one (a stable sort)."""
    order = np.lexsort((ts, users))
    return order[np.r_[users[order][1:] != users[order][:-1], True]]


def newest_histories(train: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(items, user_index) of the engaged events in each user's newest training row, oldest first per user, with
    repeats of the same item in a row collapsed; the user index is dense (0..users-1)."""
    users = train.column("user_id").to_numpy()
    ts = train.column("ts").cast(pa.int64()).to_numpy()
    rows = train.take(pa.array(newest_row_per_user(users, ts))).select(["seq_item_id", "seq_action"])
    lengths = pc.list_value_length(rows.column("seq_item_id")).fill_null(0).to_numpy(zero_copy_only=False)
    items = pc.list_flatten(rows.column("seq_item_id")).to_numpy()
    actions = pc.list_flatten(rows.column("seq_action")).to_numpy()
    user_index = np.repeat(np.arange(len(lengths)), lengths)
    engaged = actions != int(Action.IMPRESSION)
    items, user_index = items[engaged], user_index[engaged]
    # a like / share / purchase follows the click on the same item: one engagement, not a co-occurring pair
    repeat = np.r_[False, (items[1:] == items[:-1]) & (user_index[1:] == user_index[:-1])]
    return items[~repeat], user_index[~repeat]


def co_engagement_counts(items: np.ndarray, user_index: np.ndarray, n_items: int, window: int) -> torch.Tensor:
    """Sparse symmetric [n_items, n_items] counts of engaged pairs within `window` events of each other."""
    items = np.asarray(items, dtype=np.int64) % n_items
    total = torch.sparse_coo_tensor(torch.zeros(2, 0, dtype=torch.long), torch.zeros(0, dtype=torch.float64),
                                    (n_items, n_items), check_invariants=False)
    for k in range(1, window + 1):  # one offset at a time: memory stays at the distinct pairs, not all pairs
        same = (user_index[k:] == user_index[:-k]) & (items[k:] != items[:-k])  # an item is not its own context
        a, b = torch.from_numpy(items[k:][same]), torch.from_numpy(items[:-k][same])
        pairs = torch.sparse_coo_tensor(torch.stack([torch.cat([a, b]), torch.cat([b, a])]),
                                        torch.ones(2 * len(a), dtype=torch.float64), (n_items, n_items),
                                        check_invariants=False)
        total = (total + pairs).coalesce()
    return total


def ppmi(counts: torch.Tensor) -> torch.Tensor:
    """Positive pointwise mutual information of a sparse symmetric count matrix (zeros stay zero)."""
    idx, val = counts.indices(), counts.values()
    marg = torch.zeros(counts.shape[0], dtype=val.dtype).index_add_(0, idx[0], val)
    pmi = torch.log(val * val.sum() / (marg[idx[0]] * marg[idx[1]]))
    keep = pmi > 0
    return torch.sparse_coo_tensor(idx[:, keep], pmi[keep], counts.shape, check_invariants=False).coalesce()


def spectral_vectors(matrix: torch.Tensor, dim: int, power: float, drop_top: int, seed: int) -> torch.Tensor:
    """[n, dim] = U[:, drop_top:drop_top+dim] * S^power of a randomised truncated SVD of `matrix`."""
    q = dim + drop_top
    if q > min(matrix.shape):
        raise ValueError(f"item_init: embedding dim {dim} + drop_top {drop_top} exceeds the {min(matrix.shape)} items")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        U, S, _ = torch.svd_lowrank(matrix, q=min(q + 10, min(matrix.shape)), niter=6)
    return U[:, drop_top:q] * S[drop_top:q] ** power


def co_engagement_table(train: pa.Table, n_items: int, dim: int, cfg: ItemInitConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(vectors [n_items, dim] float32, engaged [n_items] bool) from the training split (module doc)."""
    items, users = newest_histories(train)
    counts = co_engagement_counts(items, users, n_items, cfg.window)
    engaged = torch.zeros(n_items, dtype=torch.bool)
    engaged[counts.indices()[0]] = True
    if int(engaged.sum()) < dim + cfg.drop_top:
        raise ValueError(f"item_init: only {int(engaged.sum())} items co-engaged in the training histories, "
                         f"fewer than embedding dim + drop_top = {dim + cfg.drop_top}")
    vec = spectral_vectors(ppmi(counts), dim, cfg.power, cfg.drop_top, cfg.seed)
    vec = vec * (cfg.norm / vec[engaged].norm(dim=1).mean().clamp(min=1e-12))
    return vec.float(), engaged


def newest_training_rows(files: list[Path], boundary_ms: int) -> pa.Table:
    """Each user's newest row before the validation boundary, with its whole stored history (the rows
    `newest_histories` picks from the training split), found in two column-projected passes over the files: user and
    time first, then the chosen rows' histories. The trainer's own table holds histories cut to the models' max_len."""
    from recsys.training.data import iter_row_groups

    def ts_ms(t: pa.Table) -> np.ndarray:
        return t.column("ts").cast(TRAINING.field("ts").type).cast(pa.int64()).to_numpy()

    keys = [(t.column("user_id").to_numpy(), ts_ms(t)) for t in iter_row_groups(files, ["user_id", "ts"])]
    users, ts = np.concatenate([k[0] for k in keys]), np.concatenate([k[1] for k in keys])
    before = np.flatnonzero(ts < boundary_ms)  # ties keep file order, as the split's stable sort does
    chosen = np.zeros(len(users), dtype=bool)
    chosen[before[newest_row_per_user(users[before], ts[before])]] = True
    parts, start = [], 0
    for t in iter_row_groups(files, ["user_id", "ts", "seq_item_id", "seq_action"]):
        parts.append(t.filter(pa.array(chosen[start:start + len(t)])))
        start += len(t)
    return pa.concat_tables(parts)


def item_weight(model: Ranker) -> torch.Tensor:
    """The unsharded model's item table (TorchRec shards copy it when DistributedModelParallel wraps the model)."""
    return model.embedder.ec.embeddings["t_item"].weight


@torch.no_grad()
def initialise_items(model: Ranker, files: list[Path], boundary_ms: int, cfg: ItemInitConfig) -> int:
    """Overwrite the engaged items' rows of the model's item table (before sharding) from the training table's
    `files` (rows before `boundary_ms`, full histories); returns how many.

    Under a process group of several ranks, rank 0 computes and broadcasts: every shard then starts from one bitwise
    copy (the randomised SVD's float sums need not agree across ranks with different thread counts), and the other
    ranks skip the count + SVD and its memory. A failure on rank 0 is re-raised on every rank, never a hang."""
    if cfg.method == "random":
        return 0
    weight = item_weight(model)
    shared = dist.is_initialized() and dist.get_world_size() > 1
    result: tuple[torch.Tensor, torch.Tensor] | Exception | None = None
    if not shared or dist.get_rank() == 0:
        try:
            result = co_engagement_table(newest_training_rows(files, boundary_ms), weight.shape[0], weight.shape[1], cfg)
        except Exception as err:  # noqa: BLE001 - handed to every rank below
            if not shared:
                raise
            result = err
    if shared:
        result = broadcast_object(result)
    if isinstance(result, Exception):
        raise result
    vec, engaged = result
    weight[engaged] = vec[engaged].to(weight.dtype)
    return int(engaged.sum())


__all__ = ["ItemInitConfig", "co_engagement_counts", "co_engagement_table", "initialise_items", "item_weight",
           "newest_histories", "newest_training_rows", "ppmi", "spectral_vectors"]
