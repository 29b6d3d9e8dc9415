"""Sum-pooling + MLP baseline (DLRM-style): the history is mean-pooled, concatenated with the user, domain and
candidate embeddings (and the embedder's user x candidate cross features, when `embedding.category_share` is set)
and fed to an MLP. The floor every sequence model must beat.
`interaction: dot` adds DLRM's interaction (Naumov et al. 2019; recsys/layers/dot_interaction.py): the pairwise
dot products of the five embedding vectors (pooled history as DLRM's "dense" vector; user, domain, candidate item and
candidate category as its sparse features), 10 scalars appended to the MLP input. Why: an MLP over concatenated
embeddings approximates a dot product poorly (Rendle et al., RecSys'20), and the simulator's click logit is a dot
product of interest and item factors. [ours] the concatenated embeddings stay in the MLP input beside the dots
(DLRM's top MLP sees the dense vector and the dots only). Default "none" so exports made before it load unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field

from recsys.config import StrictModel
from recsys.data.batch import BatchSpec, Candidates, RankingBatch
from recsys.layers.dot_interaction import DotInteraction
from recsys.layers.embedding import EmbeddingSettings, SparseEmbedder
from recsys.layers.mlp import MLP
from recsys.models.base import Ranker


class PoolingConfig(StrictModel):
    name: Literal["pooling"] = "pooling"
    embedding: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    hidden: list[int] = Field(default_factory=lambda: [128, 64])
    interaction: Literal["none", "dot"] = Field("none", description="DLRM's pairwise dot products of the embedding vectors added to the MLP input")


@dataclass
class PoolingState:
    user_vec: torch.Tensor  # [B, 3d] pooled history, user, domain
    seq_category: torch.Tensor  # [B, L] category ids (cross features)
    mask: torch.Tensor  # [B, L]


class PoolingRanker(Ranker):
    def __init__(self, cfg: PoolingConfig, spec: BatchSpec):
        super().__init__()
        self.cfg = cfg
        d = cfg.embedding.dim
        self.embedder = SparseEmbedder(spec, cfg.embedding)
        self.dot = DotInteraction(5) if cfg.interaction == "dot" else None
        self.mlp = MLP(5 * d + self.embedder.n_cross + (self.dot.out_dim if self.dot is not None else 0), cfg.hidden)

    def _user_vec(self, e) -> torch.Tensor:
        return torch.cat([e.pooled_history(), e.user, e.domain], -1)

    def _head(self, u: torch.Tensor, item: torch.Tensor, cat: torch.Tensor, cross: torch.Tensor | None) -> torch.Tensor:
        """u [..., 3d] (pooled history, user, domain), item / cat [..., d], cross [..., n] -> logits [...]."""
        parts = [u, item, cat] + ([cross] if cross is not None else [])
        if self.dot is not None:
            parts.append(self.dot([*u.split(item.shape[-1], -1), item, cat]))
        return self.mlp(torch.cat(parts, -1)).squeeze(-1)

    def encode_user(self, batch: RankingBatch) -> PoolingState:
        e = self.embedder(batch)
        return PoolingState(self._user_vec(e), e.seq_category_ids, e.mask)

    def score(self, state: PoolingState, candidates: Candidates) -> torch.Tensor:
        c = self.embedder.embed_candidates(candidates)
        C = candidates.item_id.shape[1]
        u = state.user_vec.unsqueeze(1).expand(-1, C, -1)
        cross = self.embedder.cross_features(state.seq_category, state.mask, self.embedder.candidate_category_ids(candidates))
        return self._head(u, c["item_id"], c["item_category"], cross)

    def forward(self, batch: RankingBatch, return_aux: bool = False):
        e = self.embedder(batch)
        logits = self._head(self._user_vec(e), e.cand["item_id"], e.cand["item_category"], e.cross)
        return (logits, torch.zeros((), device=logits.device)) if return_aux else logits
