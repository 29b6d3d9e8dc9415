"""ADS — Adaptive Domain Scaling (arXiv 2502.05523): multi-domain ranking where domain features generate the
parameters that personalise both the behaviour sequence and the candidate.

  x_i   = SideInfo([item_i, category_i, action_i, seq_domain_i], gap_i, pos_i)   sequence item -> seq_dim
          (`side_info: false`: Linear([item_i, category_i, action_i, seq_domain_i]), the paper's shared projection)
  z     = [features named in `generator_inputs`]                     domain features (request domain embedding, ...)
  h_i   = PSRG(x_i; z)                                               generated MLP (shared + private weights) per item
  q_j   = PCRG([item_c, category_c]; z), j = 1..n_queries            generated queries for the candidate
  o_j   = TargetAttention(q_j over h_1..L, padded positions masked)
  logit = MLP([o_1, ..., o_n, (mass_1..n), item_c, category_c, user, domain, (cross features)])
The personalized sequence h and the PCRG weights depend on the user/request only, so `encode_user` caches them and
`score` runs the candidates' queries, the attention and the head.

[ours] decisions (all in ADSConfig / configs/ads.yaml):
- `combine`: how shared and private parts meet, "sum" (W_s + P(z)) or "product" (W_s * P(z), elementwise); see
  recsys/layers/adaptive_domain.py for the exact formula and the initialisation.
- `generator_inputs`: the domain features feeding the generators; default the request domain's embedding only
  (add "user" for per-user generated weights).
- `psrg_depth` (depth of the generated MLP, default 2) with a residual connection around it; `n_queries` (default 4).
- PCRG weights are generated from z only; the candidate is the input of the generated layer, which keeps the
  generation candidate-independent (one generation per request however many candidates are scored).
- Attention keys and values are the personalized sequence itself (PSRG already is the per-domain projection).
- `side_info` (default true; not in the paper): the per-item input x_i gets the sequence side info LONGER uses
  (recsys/layers/side_info.py: the time gap to the request as log1p scalar + log2-bucket embedding concatenated, a
  learnable absolute position embedding added, MLP to seq_dim), positions counted from the newest event (0 = newest),
  so the attention can weight recent behaviour. The side-info MLP *replaces* the shared Linear projection (it already
  maps the same features to seq_dim; adding both would be two projections of the same input). Padded positions give
  x_i = 0 (masked in the attention anyway). Time-gap buckets/width are the layer's defaults (32 / 8, as LONGER's).
  Everything stays candidate-independent, so it is cached by `encode_user`.
- `recency_bias` (not in the paper; on in configs/, off by default so models exported before it load unchanged):
  each of the n generated queries gets a learnable additive attention score per log2 bucket of the item's distance
  from the newest event (recsys/layers/recency_bias.py, zero-initialised), so a query can concentrate on recent
  behaviour without learning it through the key geometry.
- `attention_mass` (not in the paper; on in configs/, off by default so models exported before it load unchanged):
  besides its softmax-normalised output, each query hands the head its attention mass log(1 + sum_i exp(score_i))
  (recsys/layers/target_attention.py): how strongly the candidate matches the recent sequence at all, which
  normalised attention hides (DIN's "intensity of interest").
- `match_bias` (not in the paper; on in configs/, off by default so models exported before it load unchanged): each
  query adds a learnable score to history items in the candidate's category (recsys/layers/match_bias.py: SIM's
  hard-search signal as an attention bias).
- `interaction` (not in the paper; "none" default, older exports): "dot" adds the pooling baseline's DLRM dot
  interaction (recsys/layers/dot_interaction.py) over the head's vectors: user, domain, each query's attention output
  and the candidate's item and category (needs seq_dim == embedding.dim), so the head has what the baseline's has
  ("dot" in configs/). Measured (bench_quality, concurrent topics, 12000 users, L=64, seeds 0-2; truth AUC vs the dot
  pooling baseline of the same seed): with the dots +0.0027 / +0.0024 / +0.0019, without them -0.0006 / -0.0012 /
  -0.0015 (results/bench_quality_concurrent_L64_12k{_adsdot,,_seeds}.json).
Evaluation is per domain (AUC/GAUC per domain and overall) in the training pipeline's metrics, as for every model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from recsys.config import StrictModel
from recsys.data.batch import BatchSpec, Candidates, RankingBatch
from recsys.layers.adaptive_domain import PCRG, PSRG
from recsys.layers.dot_interaction import DotInteraction, check_dot_widths
from recsys.layers.embedding import EmbeddedBatch, EmbeddingSettings, SparseEmbedder
from recsys.layers.mlp import MLP
from recsys.layers.match_bias import CategoryMatchBias
from recsys.layers.recency_bias import RecencyBias
from recsys.layers.side_info import SequenceSideInfo, positions_from_newest
from recsys.layers.target_attention import masked_target_attention
from recsys.models.base import Ranker


class ADSConfig(StrictModel):
    name: Literal["ads"] = "ads"
    embedding: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    seq_dim: int = Field(32, gt=0, description="width of the personalized sequence and of each query")
    generator_inputs: list[Literal["domain", "user"]] = Field(default_factory=lambda: ["domain"], min_length=1)
    generator_hidden: int = Field(64, gt=0, description="hidden width of the two-layer private generators")
    combine: Literal["sum", "product"] = "sum"
    psrg_depth: int = Field(2, gt=0, description="layers of the generated per-item MLP")
    psrg_residual: bool = True
    n_queries: int = Field(4, gt=0, description="PCRG queries per candidate")
    hidden: list[int] = Field(default_factory=lambda: [128, 64])
    side_info: bool = Field(True, description="time gap + position-from-newest side info on each history item")
    recency_bias: bool = Field(False, description="learnable attention bias per query and log2 distance-from-newest bucket")
    attention_mass: bool = Field(False, description="feed each query's attention mass log(1 + sum exp score) to the head")
    match_bias: bool = Field(False, description="learnable attention bias per query for history items in the candidate's category")
    interaction: Literal["none", "dot"] = Field("none", description="the pooling baseline's DLRM dot interaction, over the head's vectors and each query's attention output")

    @model_validator(mode="after")
    def _check(self) -> "ADSConfig":
        check_dot_widths(self.interaction, "seq_dim", self.seq_dim, self.embedding.dim)
        return self


@dataclass
class ADSState:
    seq: torch.Tensor  # [B, L, seq_dim] personalized sequence
    mask: torch.Tensor  # [B, L]
    q_weight: torch.Tensor  # [B, n_queries, 2d, seq_dim] generated PCRG weights
    q_bias: torch.Tensor  # [B, n_queries, seq_dim]
    user: torch.Tensor  # [B, d]
    domain: torch.Tensor  # [B, d]
    seq_category: torch.Tensor  # [B, L] category ids (for the category-match bias)


class ADSRanker(Ranker):
    def __init__(self, cfg: ADSConfig, spec: BatchSpec):
        super().__init__()
        self.cfg = cfg
        d, s = cfg.embedding.dim, cfg.seq_dim
        cond = d * len(cfg.generator_inputs)
        self.embedder = SparseEmbedder(spec, cfg.embedding)
        if cfg.side_info:
            self.side_info = SequenceSideInfo(4 * d, s, spec.max_len)
        else:
            self.seq_in = nn.Linear(4 * d, s)
        self.psrg = PSRG(s, cond, cfg.generator_hidden, cfg.psrg_depth, cfg.combine, cfg.psrg_residual)
        self.pcrg = PCRG(2 * d, s, cond, cfg.generator_hidden, cfg.n_queries, cfg.combine)
        # dot vectors: user, domain, each query's attention output, candidate item and category
        self.dot = DotInteraction(4 + cfg.n_queries) if cfg.interaction == "dot" else None
        n_dot = self.dot.out_dim if self.dot is not None else 0
        self.head = MLP(cfg.n_queries * (s + int(cfg.attention_mass)) + 4 * d + self.embedder.n_cross + n_dot, cfg.hidden)
        self.recency = RecencyBias(cfg.n_queries) if cfg.recency_bias else None
        self.match = CategoryMatchBias(cfg.n_queries) if cfg.match_bias else None

    def domain_features(self, e: EmbeddedBatch) -> torch.Tensor:
        """z [B, cond]: the generators' input."""
        parts = {"domain": e.domain, "user": e.user}
        return torch.cat([parts[k] for k in self.cfg.generator_inputs], -1)

    def encode(self, e: EmbeddedBatch) -> ADSState:
        z = self.domain_features(e)
        feats = torch.cat([e.seq[k] for k in ("seq_item_id", "seq_category", "seq_action", "seq_domain")], -1)
        if self.cfg.side_info:
            x = self.side_info(feats, e.time_gap, positions_from_newest(e.lengths, feats.shape[1]), e.mask)
        else:
            x = self.seq_in(feats)
        h = self.psrg(x, z)
        w, b = self.pcrg.generate(z)
        return ADSState(h, e.mask, w, b, e.user, e.domain, e.seq_category_ids)

    def encode_user(self, batch: RankingBatch) -> ADSState:
        return self.encode(self.embedder(batch))

    def _score(self, state: ADSState, item: torch.Tensor, cat: torch.Tensor, cat_ids: torch.Tensor,
               cross: torch.Tensor | None) -> torch.Tensor:
        """item, cat: [B, C, d], cat_ids [B, C], cross [B, C, n] or None -> logits [B, C]."""
        B, C, _ = item.shape
        Q, s = self.cfg.n_queries, self.cfg.seq_dim
        q = PCRG.project(torch.cat([item, cat], -1), state.q_weight, state.q_bias).reshape(B, C * Q, s)
        L = state.mask.shape[1]
        bias = torch.zeros((), device=item.device)  # per (candidate, query) row of q: [B, C, Q, L] -> [B, C*Q, L]
        if self.recency is not None:  # [Q, B, L] -> [B, 1, Q, L]
            bias = bias + self.recency(positions_from_newest(state.mask.sum(-1), L)).permute(1, 0, 2).unsqueeze(1)
        if self.match is not None:  # [B, C, Q, L]
            bias = bias + self.match(CategoryMatchBias.match(state.seq_category.unsqueeze(-1), state.mask.unsqueeze(-1), cat_ids))
        bias = bias.expand(B, C, Q, L).reshape(B, C * Q, L) if bias.dim() else None
        att = masked_target_attention(q, state.seq, state.seq, state.mask, bias, return_mass=self.cfg.attention_mass)
        parts = [att[0].view(B, C, Q * s), att[1].view(B, C, Q)] if self.cfg.attention_mass else [att.view(B, C, Q * s)]
        ctx = torch.cat([state.user, state.domain], -1).unsqueeze(1).expand(-1, C, -1)
        parts += [item, cat, ctx] + ([cross] if cross is not None else [])
        if self.dot is not None:  # parts[0] = the queries' outputs
            parts.append(self.dot([*ctx.split(s, -1), *parts[0].split(s, -1), item, cat]))
        return self.head(torch.cat(parts, -1)).squeeze(-1)

    def score(self, state: ADSState, candidates: Candidates) -> torch.Tensor:
        c = self.embedder.embed_candidates(candidates)
        cat_ids = self.embedder.candidate_category_ids(candidates)
        cross = self.embedder.cross_features(state.seq_category, state.mask, cat_ids)
        return self._score(state, c["item_id"], c["item_category"], cat_ids, cross)

    def forward(self, batch: RankingBatch, return_aux: bool = False):
        e = self.embedder(batch)
        logits = self._score(self.encode(e), e.cand["item_id"].unsqueeze(1), e.cand["item_category"].unsqueeze(1),
                             e.cand_category_ids.unsqueeze(1), None if e.cross is None else e.cross.unsqueeze(1))[:, 0]
        return (logits, torch.zeros((), device=logits.device)) if return_aux else logits


__all__ = ["ADSConfig", "ADSRanker", "ADSState"]
