"""Shared sparse-feature embedding for every ranker, built from TorchRec modules so the trainer can shard it.

- One EmbeddingCollection over the batch's `sparse` KJT: history and candidate share the item and category tables
  (a table lists both feature names), so one lookup serves both and sharding sees one table per vocabulary.
- One EmbeddingBagCollection over the `context` KJT (user id, request domain; pooled).
- Optional user x candidate cross features (`category_share`: recency-weighted share of the history in the
  candidate's category, recsys/layers/cross_features.py), for the batch's own candidate (`EmbeddedBatch.cross`)
  and for C candidates from a cached state (`cross_features`); every model feeds them to its head.
- Optional hashed n-gram item embeddings (Over-tokenized inputs, arXiv 2501.16975): for n in `ngram.orders`,
  id_n(t) = (x_t + x_{t-1} V + x_{t-2} V^2 ...) mod table_size over consecutive history items (positions before the
  sequence start use id 0 = "no item"), looked up in a separate EmbeddingCollection and added to the item embedding.
Padded outputs are left-aligned: position j < length is the j-th oldest kept event; the newest sits at length-1.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
from pydantic import Field
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, EmbeddingConfig as TableConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.config import StrictModel
from recsys.data.batch import CAND_KEYS, CONTEXT_KEYS, SEQ_KEYS, SPARSE_KEYS, BatchSpec, Candidates, RankingBatch
from recsys.layers.cross_features import category_share
from recsys.layers.side_info import positions_from_newest


class NGramConfig(StrictModel):
    enabled: bool = False
    orders: list[int] = Field(default_factory=lambda: [2, 3])
    table_size: int = Field(100_003, gt=0, description="rows per n-gram table (the knob the paper scales)")


class EmbeddingSettings(StrictModel):
    dim: int = Field(32, gt=0, description="width of every id embedding")
    ngram: NGramConfig = Field(default_factory=NGramConfig)
    category_share: list[Annotated[float, Field(gt=0, le=1)]] = Field(
        default_factory=list,
        description="decay rates of the user x candidate category-share cross features (recsys/layers/cross_features.py); "
        "empty = none",
    )


@dataclass
class EmbeddedBatch:
    seq: dict[str, torch.Tensor]  # SEQ_KEYS -> [B, L, d] padded with zeros (item includes n-gram embeddings)
    mask: torch.Tensor  # [B, L] bool, True where a real event sits
    time_gap: torch.Tensor  # [B, L] float seconds (0 in padding)
    lengths: torch.Tensor  # [B]
    cand: dict[str, torch.Tensor]  # CAND_KEYS -> [B, d]
    user: torch.Tensor  # [B, d]
    domain: torch.Tensor  # [B, d]
    seq_category_ids: torch.Tensor  # [B, L] long category ids (0 in padding), for exact-match features
    cand_category_ids: torch.Tensor  # [B] long
    cross: torch.Tensor | None  # [B, n] category-share cross features of the batch's candidate (None when off)

    def pooled_history(self) -> torch.Tensor:
        """[B, d] mean over real events of the summed sequence embeddings (item + category + action + domain): the
        pooling baseline's history vector (0 for an empty history)."""
        tok = sum(self.seq.values()) * self.mask.unsqueeze(-1)
        return tok.sum(1) / self.lengths.clamp(min=1).unsqueeze(-1).to(tok.dtype)


def _table_name(vocab: str) -> str:
    return f"t_{vocab}"


class SparseEmbedder(nn.Module):
    def __init__(self, spec: BatchSpec, cfg: EmbeddingSettings):
        super().__init__()
        self.spec, self.cfg, d = spec, cfg, cfg.dim
        tables = [
            TableConfig(num_embeddings=spec.vocab_sizes["item"], embedding_dim=d, name=_table_name("item"), feature_names=["seq_item_id", "item_id"]),
            TableConfig(num_embeddings=spec.vocab_sizes["category"], embedding_dim=d, name=_table_name("category"), feature_names=["seq_category", "item_category"]),
            TableConfig(num_embeddings=spec.vocab_sizes["action"], embedding_dim=d, name=_table_name("action"), feature_names=["seq_action"]),
            TableConfig(num_embeddings=spec.vocab_sizes["domain"], embedding_dim=d, name=_table_name("seq_domain"), feature_names=["seq_domain"]),
        ]
        self.ec = EmbeddingCollection(tables=tables)
        self.ebc = EmbeddingBagCollection(
            tables=[
                EmbeddingBagConfig(num_embeddings=spec.vocab_sizes["user"], embedding_dim=d, name=_table_name("user"), feature_names=["user_id"], pooling=PoolingType.SUM),
                EmbeddingBagConfig(num_embeddings=spec.vocab_sizes["domain"], embedding_dim=d, name=_table_name("ctx_domain"), feature_names=["domain"], pooling=PoolingType.SUM),
            ]
        )
        self.ngram_keys = [f"seq_ngram{n}" for n in cfg.ngram.orders] if cfg.ngram.enabled else []
        if self.ngram_keys:
            self.ngram_ec = EmbeddingCollection(
                tables=[
                    TableConfig(num_embeddings=cfg.ngram.table_size, embedding_dim=d, name=f"t_ngram{n}", feature_names=[f"seq_ngram{n}"])
                    for n in cfg.ngram.orders
                ]
            )

    # -- n-grams -------------------------------------------------------------------------------------------
    def ngram_ids(self, items: torch.Tensor, lengths: torch.Tensor) -> dict[str, torch.Tensor]:
        """Hashed n-gram ids over each sequence's consecutive items (flat, aligned with `items`)."""
        V = self.spec.vocab_sizes["item"]
        m = self.cfg.ngram.table_size
        offsets = torch.cumsum(lengths, 0) - lengths
        pos = torch.arange(items.numel(), device=items.device) - torch.repeat_interleave(offsets, lengths)
        out = {}
        for n in self.cfg.ngram.orders:
            h = torch.zeros_like(items)
            mult = 1
            for j in range(n):
                prev = torch.roll(items, j) if j else items
                valid = pos >= j
                h = (h + torch.where(valid, prev + 1, torch.zeros_like(prev)) % m * (mult % m)) % m
                mult = mult * (V + 1)
            out[f"seq_ngram{n}"] = h
        return out

    # -- lookups -------------------------------------------------------------------------------------------
    def forward(self, batch: RankingBatch) -> EmbeddedBatch:
        jts = self.ec(batch.sparse)
        B = batch.batch_size
        lengths = batch.seq_lengths
        L = max(int(lengths.max()) if lengths.numel() else 0, 1)
        seq = {k: jts[k].to_padded_dense(desired_length=L) for k in SEQ_KEYS}
        if self.ngram_keys:
            ids = self.ngram_ids(batch.sparse["seq_item_id"].values(), lengths)
            kjt = KeyedJaggedTensor(
                keys=self.ngram_keys,
                values=torch.cat([ids[k] for k in self.ngram_keys]),
                lengths=torch.cat([lengths] * len(self.ngram_keys)),
            )
            ng = self.ngram_ec(kjt)
            for k in self.ngram_keys:
                seq["seq_item_id"] = seq["seq_item_id"] + ng[k].to_padded_dense(desired_length=L)
        mask = torch.arange(L, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)
        gap = torch.zeros(B, L, dtype=batch.seq_time_gap.dtype, device=lengths.device)
        gap[mask] = batch.seq_time_gap
        cand = {k: jts[k].values().view(B, -1) for k in CAND_KEYS}
        pooled = self.ebc(batch.context)
        seq_cats = batch.sparse["seq_category"].to_padded_dense(desired_length=L, padding_value=0)
        cand_cats = batch.sparse["item_category"].values()
        cross = self.cross_features(seq_cats, mask, cand_cats.unsqueeze(1))
        return EmbeddedBatch(
            seq=seq, mask=mask, time_gap=gap, lengths=lengths, cand=cand, user=pooled["user_id"], domain=pooled["domain"],
            seq_category_ids=seq_cats, cand_category_ids=cand_cats, cross=None if cross is None else cross[:, 0],
        )

    # -- cross features ------------------------------------------------------------------------------------
    @property
    def n_cross(self) -> int:
        """Width of the cross features (0 when off)."""
        return len(self.cfg.category_share)

    def cross_features(self, seq_category: torch.Tensor, valid: torch.Tensor, cand_category: torch.Tensor,
                       pos: torch.Tensor | None = None) -> torch.Tensor | None:
        """Category-share cross features [B, C, n] for left-aligned histories seq_category / valid [B, L] (or any
        layout with its distance-from-newest `pos` [B, L]) and candidates cand_category [B, C]; None when off."""
        if not self.cfg.category_share:
            return None
        if pos is None:
            pos = positions_from_newest(valid.sum(-1), valid.shape[1])
        decays = torch.tensor(self.cfg.category_share, device=valid.device)
        return category_share(seq_category, valid, pos, cand_category, decays)

    def candidate_category_ids(self, candidates: Candidates) -> torch.Tensor:
        """[B, C] category ids as the lookups see them (modulo the vocabulary, like `build_batch`)."""
        return candidates.item_category % self.spec.vocab_sizes["category"]

    def embed_candidates(self, candidates: Candidates) -> dict[str, torch.Tensor]:
        """[B, C] candidate ids -> CAND_KEYS -> [B, C, d] through the same (shared) tables."""
        B, C = candidates.item_id.shape
        n = B * C
        dev = candidates.item_id.device
        zeros = torch.zeros(n, dtype=torch.long, device=dev)
        ones = torch.ones(n, dtype=torch.long, device=dev)
        item = candidates.item_id.reshape(-1) % self.spec.vocab_sizes["item"]
        cat = self.candidate_category_ids(candidates).reshape(-1)
        kjt = KeyedJaggedTensor(
            keys=list(SPARSE_KEYS),
            values=torch.cat([item, cat]),
            lengths=torch.cat([zeros] * len(SEQ_KEYS) + [ones, ones]),
        )
        jts = self.ec(kjt)
        return {k: jts[k].values().view(B, C, -1) for k in CAND_KEYS}


__all__ = ["SparseEmbedder", "EmbeddingSettings", "NGramConfig", "EmbeddedBatch", "CONTEXT_KEYS"]
