"""Product-key memory (Lample et al. 2019; LMN's "two-axis activation", arXiv 2502.05558) with the values in a
TorchRec table.

A query of width `key_dim` is split into two halves; each half is scored against its own table of `n_keys`
sub-keys, the top `topk_per_axis` (k) of each axis form k*k candidate slots with score s1[a] + s2[b], and the top
`top_k` (K) of those are read: a weighted sum of their value rows (slot id a * n_keys + b). This finds the exact
top-K of all n = n_keys**2 slots (see `brute_force_topk`) in O(sqrt(n) * key_dim) per query instead of O(n * key_dim):
whenever k >= K, a slot outside the k*k grid is beaten by at least k >= K grid slots on the same row or column.

The value table is an `EmbeddingBagCollection` table (`table_name`, n rows x `value_dim`) looked up as a weighted
bag: one bag per query holding its K (times `heads`) slot ids with their weights as per-sample weights. Gradients
reach the values through the bag and the queries/sub-keys through the weights, and the trainer's
DistributedModelParallel shards the table (and runs its fused optimizer) like any other embedding table.

[ours] / options:
- `heads` (PKM paper): several independent query/sub-key sets read the same value table; all heads' slots go in one
  bag (their read-outs are summed).
- `query_norm`, `key_norm` (UltraMem, arXiv 2411.12364): LayerNorm on each query half and on the sub-keys, which
  keeps the two axes' scores on one scale.
- `score`: "softmax" over the K selected scores (PKM/LMN) or "sigmoid" per slot (UltraMem: slots do not compete).
- UltraMem's Tucker-decomposed key scoring and implicit value expansion are not implemented.
- `chunk_size`: the sub-key scoring runs in chunks of queries so the [queries x n_keys] score matrix never exists
  whole (at 128k queries x 1024 keys it would be 512 MB per axis). The search itself runs without autograd; the K
  selected scores are recomputed from gathered sub-keys with autograd (sparse backward, see `search`).
- Values are initialised N(0, value_dim**-0.5) (PKM paper); sub-keys N(0, 1/sqrt(key_dim/2)).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.config import StrictModel


class ProductKeyMemoryConfig(StrictModel):
    n_keys: int = Field(256, gt=1, description="sub-keys per axis; the memory has n_keys**2 value slots")
    key_dim: int = Field(64, gt=1, description="query width (even); each axis scores one half")
    value_dim: int = Field(32, gt=0)
    heads: int = Field(1, gt=0, description="independent query/sub-key sets reading the same values")
    topk_per_axis: int = Field(16, gt=0, description="k: candidates kept per axis (k*k grid); must be >= top_k")
    top_k: int = Field(16, gt=0, description="K: slots read per query and head")
    score: Literal["softmax", "sigmoid"] = "softmax"
    query_norm: bool = Field(False, description="UltraMem: LayerNorm on each query half")
    key_norm: bool = Field(False, description="UltraMem: LayerNorm on the sub-keys")
    chunk_size: int = Field(16384, gt=0, description="queries scored per chunk (bounds the score-matrix memory)")
    table_name: str = "t_pkm_values"

    @model_validator(mode="after")
    def _check(self) -> "ProductKeyMemoryConfig":
        if self.key_dim % 2:
            raise ValueError(f"key_dim must be even (two halves), got {self.key_dim}")
        if self.topk_per_axis > self.n_keys:
            raise ValueError(f"topk_per_axis ({self.topk_per_axis}) must be <= n_keys ({self.n_keys})")
        if self.top_k > self.topk_per_axis:
            raise ValueError(
                f"top_k ({self.top_k}) must be <= topk_per_axis ({self.topk_per_axis}): otherwise the product-key "
                "search is no longer exact"
            )
        return self

    @property
    def n_slots(self) -> int:
        return self.n_keys**2


@dataclass
class MemoryRead:
    out: torch.Tensor  # [N, value_dim] read-out
    slots: torch.Tensor  # [N, heads, top_k] int64 slot ids (a * n_keys + b)
    scores: torch.Tensor  # [N, heads, top_k] their scores, descending per head
    weights: torch.Tensor  # [N, heads, top_k] read weights (softmax over K or sigmoid)


class ProductKeyMemory(nn.Module):
    """query [N, heads * key_dim] -> MemoryRead; `forward` returns only the read-out."""

    def __init__(self, cfg: ProductKeyMemoryConfig):
        super().__init__()
        self.cfg = cfg
        half = cfg.key_dim // 2
        self.half = half
        self.sub_keys = nn.Parameter(torch.randn(2, cfg.heads, cfg.n_keys, half) / half**0.5)
        self.q_norm = nn.LayerNorm(half) if cfg.query_norm else None
        self.k_norm = nn.LayerNorm(half, elementwise_affine=False) if cfg.key_norm else None
        self.feature = f"{cfg.table_name}_slot"
        self.values = EmbeddingBagCollection(
            tables=[
                EmbeddingBagConfig(
                    num_embeddings=cfg.n_slots,
                    embedding_dim=cfg.value_dim,
                    name=cfg.table_name,
                    feature_names=[self.feature],
                    pooling=PoolingType.SUM,
                    init_fn=functools.partial(nn.init.normal_, mean=0.0, std=cfg.value_dim**-0.5),
                )
            ],
            is_weighted=True,
        )

    # -- key search ----------------------------------------------------------------------------------------
    def _halves(self, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        c = self.cfg
        q = query.view(query.shape[0], c.heads, c.key_dim)
        q1, q2 = q[..., : self.half], q[..., self.half :]
        k1, k2 = self.sub_keys[0], self.sub_keys[1]  # [H, n_keys, half]
        if self.q_norm is not None:
            q1, q2 = self.q_norm(q1), self.q_norm(q2)
        if self.k_norm is not None:
            k1, k2 = self.k_norm(k1), self.k_norm(k2)
        return q1, q2, k1, k2

    @staticmethod
    def _axis_scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nhd,hkd->nhk", q, k)  # [N, H, n_keys]

    def search(self, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-K (scores, slot ids), each [N, heads, top_k], best first; differentiable in the scores.

        The selection runs without autograd (chunked matmuls + top-k); only the K chosen slots' scores are then
        recomputed with autograd from their gathered sub-keys, so the backward touches K keys per axis instead of
        a dense [N, n_keys] gradient per axis.
        """
        c = self.cfg
        q1, q2, k1, k2 = self._halves(query)
        k = c.topk_per_axis
        with torch.no_grad():
            slots_l = []
            for s in range(0, q1.shape[0], c.chunk_size):
                v1, i1 = self._axis_scores(q1[s : s + c.chunk_size], k1).topk(k, dim=-1)
                v2, i2 = self._axis_scores(q2[s : s + c.chunk_size], k2).topk(k, dim=-1)
                grid = (v1.unsqueeze(-1) + v2.unsqueeze(-2)).flatten(-2)  # [n, H, k*k]
                flat = grid.topk(c.top_k, dim=-1).indices
                slots_l.append(i1.gather(-1, flat // k) * c.n_keys + i2.gather(-1, flat % k))
            slots = torch.cat(slots_l) if slots_l else query.new_zeros(0, c.heads, c.top_k, dtype=torch.long)
        # gather the chosen sub-keys as embedding rows (cheap scatter-add backward) and score them with a batched
        # matmul: [N, H, 1, half] x [N, H, half, K]
        base = (torch.arange(c.heads, device=query.device) * c.n_keys).view(1, -1, 1)
        g1 = F.embedding(slots // c.n_keys + base, k1.reshape(-1, self.half))  # [N, H, K, half]
        g2 = F.embedding(slots % c.n_keys + base, k2.reshape(-1, self.half))
        scores = torch.einsum("nhd,nhkd->nhk", q1, g1) + torch.einsum("nhd,nhkd->nhk", q2, g2)
        # (recomputed scores equal the selection's up to float rounding; the slot order is the selection's)
        return scores, slots

    def brute_force_topk(self, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference: score all n slots (s1[a] + s2[b] for every a, b) and take the top-K. O(n) per query."""
        q1, q2, k1, k2 = self._halves(query)
        s1, s2 = self._axis_scores(q1, k1), self._axis_scores(q2, k2)
        full = (s1.unsqueeze(-1) + s2.unsqueeze(-2)).flatten(-2)  # index a * n_keys + b
        return full.topk(self.cfg.top_k, dim=-1)

    # -- read ----------------------------------------------------------------------------------------------
    def read(self, query: torch.Tensor, bag_index: torch.Tensor | None = None, num_bags: int | None = None) -> MemoryRead:
        """Read the memory for N queries.

        Sharded tables need the lookup's batch size (number of bags) to be the same on every rank, while the number
        of queries N may differ (users have different history lengths). Pass `num_bags` fixed across ranks and
        `bag_index` [N] (distinct bags, any order) to place read i in bag bag_index[i]; the other bags stay empty.
        The lookup always runs, even for N = 0, so every rank joins the table's collectives.
        """
        c = self.cfg
        n = query.shape[0]
        scores, slots = self.search(query)
        weights = torch.softmax(scores, dim=-1) if c.score == "softmax" else torch.sigmoid(scores)
        per_bag = c.heads * c.top_k
        if bag_index is None:
            order, lengths = None, torch.full((n,), per_bag, dtype=torch.long, device=query.device)
        else:
            if num_bags is None:
                raise ValueError("read: num_bags is required with bag_index")
            order = bag_index.argsort()
            lengths = torch.zeros(num_bags, dtype=torch.long, device=query.device)
            lengths[bag_index] = per_bag
        vals, w = slots.reshape(n, per_bag), weights.reshape(n, per_bag)
        if order is not None:
            vals, w = vals[order], w[order]
        kjt = KeyedJaggedTensor(keys=[self.feature], values=vals.reshape(-1), lengths=lengths, weights=w.reshape(-1))
        out = self.values(kjt)[self.feature]
        if bag_index is not None:
            out = out[bag_index]
        return MemoryRead(out=out, slots=slots, scores=scores, weights=weights)

    def forward(self, query: torch.Tensor) -> torch.Tensor:
        return self.read(query).out


__all__ = ["ProductKeyMemory", "ProductKeyMemoryConfig", "MemoryRead"]
