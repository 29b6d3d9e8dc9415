"""Vanilla Transformer ranker: full self-attention over the whole (unmerged) history plus the candidate token —
the cost baseline LONGER must beat (O(L^2) attention in every layer, nothing cacheable across candidates).

Tokens: every history item through the same side info as LONGER (time gap + absolute position + MLP, so the
comparison isolates the attention structure), projected to `d_model`, plus one candidate token
([item, category] -> d_model). `layers` pre-norm blocks (HybridNorm / post-norm available) with bidirectional
attention; padded history positions are masked as keys. Head: MLP over [final candidate-token output, user, domain].

Two-stage interface [ours]: every token sees the candidate, so no layer's state is candidate-independent;
`encode_user` caches only the input tokens (embeddings + side info), and `score` recomputes all layers for each
(user, candidate) pair, batched `score_chunk` candidates at a time. Correct, but it costs a full forward per candidate.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from recsys.config import StrictModel
from recsys.data.batch import SEQ_KEYS, BatchSpec, Candidates, RankingBatch
from recsys.layers.block import TransformerBlock
from recsys.layers.embedding import EmbeddedBatch, EmbeddingSettings, SparseEmbedder
from recsys.layers.mlp import MLP
from recsys.layers.norms import NormPlacement, NormType, make_norm
from recsys.layers.side_info import SequenceSideInfo
from recsys.models.base import DenseOptionsMixin, Ranker


class TransformerConfig(StrictModel):
    name: Literal["transformer"] = "transformer"
    embedding: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    d_model: int = Field(64, gt=0)
    heads: int = Field(4, gt=0)
    item_dim: int = Field(32, gt=0, description="width of one item token after the side-info MLP")
    layers: int = Field(3, gt=0)
    ffn_mult: int = Field(4, gt=0)
    norm: NormPlacement = "pre"
    norm_type: NormType = "layernorm"
    time_buckets: int = Field(32, gt=0)
    time_dim: int = Field(8, gt=0)
    position: Literal["from_newest", "from_oldest"] = "from_newest"
    head_hidden: list[int] = Field(default_factory=lambda: [128, 64])
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    bf16: bool = False
    activation_checkpointing: bool = False
    score_chunk: int = Field(64, gt=0, description="candidates recomputed together in score()")

    @model_validator(mode="after")
    def _check(self) -> "TransformerConfig":
        if self.d_model % self.heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by heads={self.heads}")
        return self


@dataclass
class TransformerState:
    tokens: torch.Tensor  # [B, L, d_model] history input tokens
    valid: torch.Tensor  # [B, L]
    user: torch.Tensor  # [B, e]
    domain: torch.Tensor  # [B, e]
    seq_category: torch.Tensor  # [B, L] category ids (cross features)


class TransformerRanker(DenseOptionsMixin, Ranker):
    def __init__(self, cfg: TransformerConfig, spec: BatchSpec):
        super().__init__()
        self.cfg = cfg
        e, D = cfg.embedding.dim, cfg.d_model
        self.embedder = SparseEmbedder(spec, cfg.embedding)
        self.side_info = SequenceSideInfo(len(SEQ_KEYS) * e, cfg.item_dim, spec.max_len, cfg.time_buckets, cfg.time_dim)
        self.item_proj = nn.Linear(cfg.item_dim, D)
        self.cand_proj = nn.Linear(2 * e, D)
        self.blocks = nn.ModuleList(
            [TransformerBlock(D, cfg.heads, cfg.ffn_mult, cfg.norm, cfg.norm_type, cfg.dropout) for _ in range(cfg.layers)]
        )
        self.final_norm = make_norm(cfg.norm_type, D) if cfg.norm == "pre" else nn.Identity()
        self.head = MLP(D + 2 * e + self.embedder.n_cross, cfg.head_hidden, 1, cfg.dropout)

    def _history_tokens(self, e: EmbeddedBatch) -> torch.Tensor:
        feats = torch.cat([e.seq[k] for k in SEQ_KEYS], -1)
        L = e.mask.shape[1]
        j = torch.arange(L, device=e.mask.device).unsqueeze(0)
        pos = (e.lengths.unsqueeze(1) - 1 - j) if self.cfg.position == "from_newest" else j.expand_as(e.mask)
        return self.item_proj(self.side_info(feats, e.time_gap, pos, e.mask))

    def _encode(self, tokens, valid, cand, user, domain, cross=None) -> torch.Tensor:
        """History tokens [N, L, D] + candidate token [N, D] (+ cross features [N, n]) -> logits [N] (full attention
        over L+1 tokens)."""
        x = torch.cat([tokens, cand.unsqueeze(1).to(tokens.dtype)], 1)
        key_valid = torch.cat([valid, valid.new_ones(valid.shape[0], 1)], 1)
        mask = key_valid[:, None, None, :]  # [N, 1, 1, L+1]: every query sees every real key
        for blk in self.blocks:
            x = self._run(blk, x, None, mask)
        out = self.final_norm(x[:, -1])
        parts = [out, user.to(out.dtype), domain.to(out.dtype)] + ([cross.to(out.dtype)] if cross is not None else [])
        return self.head(torch.cat(parts, -1)).squeeze(-1)

    def forward(self, batch: RankingBatch, return_aux: bool = False):
        e = self.embedder(batch)
        with self._autocast(batch.labels.device):
            tokens = self._history_tokens(e)
            cand = self.cand_proj(torch.cat([e.cand["item_id"], e.cand["item_category"]], -1))
            logits = self._encode(tokens, e.mask, cand, e.user, e.domain, e.cross).float()
        return (logits, torch.zeros((), device=logits.device)) if return_aux else logits

    def encode_user(self, batch: RankingBatch) -> TransformerState:
        e = self.embedder(batch)
        with self._autocast(batch.labels.device):
            return TransformerState(self._history_tokens(e), e.mask, e.user, e.domain, e.seq_category_ids)

    def score(self, state: TransformerState, candidates: Candidates) -> torch.Tensor:
        c = self.embedder.embed_candidates(candidates)
        B, C = candidates.item_id.shape
        out = []
        cross = self.embedder.cross_features(state.seq_category, state.valid, self.embedder.candidate_category_ids(candidates))
        with self._autocast(candidates.item_id.device):
            cand = self.cand_proj(torch.cat([c["item_id"], c["item_category"]], -1))  # [B, C, D]
            for s in range(0, C, self.cfg.score_chunk):
                cc = cand[:, s : s + self.cfg.score_chunk]
                n = cc.shape[1]

                def rep(t: torch.Tensor) -> torch.Tensor:
                    return t.repeat_interleave(n, dim=0)

                cx = None if cross is None else cross[:, s : s + n].reshape(B * n, -1)
                logits = self._encode(rep(state.tokens), rep(state.valid), cc.reshape(B * n, -1), rep(state.user), rep(state.domain), cx)
                out.append(logits.float().view(B, n))
        return torch.cat(out, 1)


__all__ = ["TransformerConfig", "TransformerRanker", "TransformerState"]
