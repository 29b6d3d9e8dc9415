"""DIN — Deep Interest Network (Zhou et al., KDD'18): target attention with a local activation unit.

For a candidate v = [item, category] and each history item h_j = [item_j, category_j] (shared tables):
  w_j = ActivationUnit([h_j, v, h_j - v, h_j * v])      (an MLP -> scalar; the paper's out-product replaced by the
                                                         element-wise product, as in most public implementations)
  interest = sum_j w_j * h_j over real positions          (no softmax: DIN keeps the intensity of interest)
  logit = MLP([interest, (history profile), user, domain, v, (cross features: embedding.category_share)])
[ours] `history_action` (on in configs/, off by default so older exports load unchanged): our histories hold every
event, impressions included (the paper's hold only clicked goods), so what the user did matters as much as what was
shown. With it the activation unit also reads the action embedding a_j, and the pooled interest and the mean-pooled
history carry it: w_j = ActivationUnit([h_j, v, h_j - v, h_j * v, a_j]), interest = sum_j w_j [h_j, a_j].
[ours] `profile`: the whole-history summary beside the attended interest (the paper has none: its behaviour
sequence only enters through the attention). "concat" (default, older exports): mean of [item, category, (action)]
concatenated; "sum": the pooling baseline's vector (mean of the summed item + category + action + domain
embeddings, `EmbeddedBatch.pooled_history`), so DIN is exactly the baseline plus the target-attention interest;
"none": the paper's head. configs/din.yaml: "sum" (bench_quality at L=64, truth AUC: sum 0.7692, concat 0.7680,
pooling 0.7690; with a temporary patch zeroing one part of the concat head: profile zeroed 0.7689, interest zeroed
0.7673, results/bench_quality_diag_din64_{np,ni}.json).
[ours] `attention_len` (None = the whole history; configs/din.yaml: 64): the activation unit reads only the newest W
events (the mean-pooled profile and the cross features still cover the whole history). The paper's behaviour
sequences are short; over L = 2000 events the weighted mean blurs the recent interest the simulator's CTR follows
(bench_quality: DIN over the newest 16 events alone beat DIN over 2000 by +0.0066 truth AUC) and the unit's cost
grows with L x candidates.
[ours] `recency_bias` (on in configs/, off by default so older exports load unchanged): a learned weight per log2
bucket of the event's distance from the newest (recsys/layers/recency_bias.py, zero-initialised) is added to the
activation unit's output, w_j = ActivationUnit(...) + b[bucket(distance_j)], so the interest can decay with age as
the simulator's (and a real user's) short-term interest does; the unit itself has no notion of order.
[ours] `weight_norm`: "none" (the paper), "softmax", or "mean" (divide the weighted sum by the history length).
Default "mean": the paper's histories are short; with L up to 2000 the unnormalised sum scales with L, so its
magnitude would track history length rather than interest intensity. "none" remains available.
[ours] `interaction` ("none" default, the paper's head; configs/din.yaml: "dot"): the pooling baseline's DLRM dot
interaction (recsys/layers/dot_interaction.py) over the head's embedding vectors — (pooled history when `profile` is
"sum"), user, domain, the attended interest's item / category / (action) parts, candidate item and category. The
paper's DIN is its base model (Embedding&MLP) with the sum-pooling replaced by the activation unit; with `profile:
sum` and `interaction: dot` DIN keeps that relation to our baseline, which has DLRM's dots (configs/pooling.yaml),
so the comparison isolates the target attention instead of a head the baseline has and DIN lacks. Measured
(bench_quality, concurrent topics, 12000 users, L=64, seeds 0-2): truth AUC vs the dot pooling baseline of the same
seed, with the dots +0.0012 / -0.0006 / -0.0026 (mean -0.0007), without them -0.0021 / -0.0032 / -0.0032 (mean -0.0030):
the dots gain on every seed (results/bench_quality_concurrent_L64_12k_dindot.json). Default simulator, L=2000, seeds
0-2: with the dots +0.0002 mean, without -0.0002 (the dots move DIN -0.0017 / +0.0007 / +0.0021; within seed noise,
benchmarks/QUALITY.md).
Two-stage: `encode_user` caches the history embeddings, mask and pooled user vector; `score` runs the activation unit
for C candidates (batched, `score_chunk` at a time to bound the [B, C, L, 8e] activation-unit input).
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
from recsys.layers.recency_bias import RecencyBias
from recsys.layers.side_info import positions_from_newest
from recsys.models.base import Ranker


class DINConfig(StrictModel):
    name: Literal["din"] = "din"
    embedding: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    attention_hidden: list[int] = Field(default_factory=lambda: [64, 32], description="local activation unit MLP")
    hidden: list[int] = Field(default_factory=lambda: [128, 64])
    weight_norm: Literal["none", "softmax", "mean"] = "mean"
    history_action: bool = Field(False, description="the activation unit and the pooled interest also read each event's action")
    profile: Literal["concat", "sum", "none"] = Field("concat", description="whole-history summary in the head")
    recency_bias: bool = Field(False, description="learned weight per log2 distance-from-newest bucket added to the activation unit")
    attention_len: int | None = Field(None, gt=0, description="newest events the activation unit reads (None = all)")
    interaction: Literal["none", "dot"] = Field("none", description="the pooling baseline's DLRM dot interaction, over the head's vectors and the attended interest")
    score_chunk: int = Field(128, gt=0, description="candidates per activation-unit pass in score()")


@dataclass
class DINState:
    hist: torch.Tensor  # [B, W, 2e (+e)] attended history [item, category, (action)] (W = attention window, or L)
    valid: torch.Tensor  # [B, W] real positions of the attended history
    profile: torch.Tensor  # [B, p + 2e] whole-history profile (width p by `profile`), user, domain
    seq_category: torch.Tensor  # [B, L] category ids of the whole history (cross features)
    mask: torch.Tensor  # [B, L] real positions of the whole history
    distance: torch.Tensor  # [B, W] distance of each attended event from the newest (0 = newest)


class DINRanker(Ranker):
    def __init__(self, cfg: DINConfig, spec: BatchSpec):
        super().__init__()
        self.cfg = cfg
        e = cfg.embedding.dim
        self.embedder = SparseEmbedder(spec, cfg.embedding)
        a = e if cfg.history_action else 0
        p = {"concat": 2 * e + a, "sum": e, "none": 0}[cfg.profile]
        self.unit = MLP(8 * e + a, cfg.attention_hidden, 1)
        self.recency = RecencyBias(1) if cfg.recency_bias else None
        # dot vectors: (pooled history if profile "sum"), user, domain, interest item/category/(action), candidate item/category
        n_vec = (cfg.profile == "sum") + 6 + cfg.history_action
        self.dot = DotInteraction(n_vec) if cfg.interaction == "dot" else None
        # [interest (2e + a), profile (p), user, domain, candidate (2e), cross, (dots)]
        self.mlp = MLP(6 * e + a + p + self.embedder.n_cross + (self.dot.out_dim if self.dot is not None else 0), cfg.hidden)

    def _state(self, e) -> DINState:
        keys = ["seq_item_id", "seq_category"] + (["seq_action"] if self.cfg.history_action else [])
        hist = torch.cat([e.seq[k] for k in keys], -1)
        parts = [e.user, e.domain]
        if self.cfg.profile == "concat":
            m = e.mask.unsqueeze(-1).to(hist.dtype)
            parts.insert(0, (hist * m).sum(1) / e.lengths.clamp(min=1).unsqueeze(-1).to(hist.dtype))
        elif self.cfg.profile == "sum":
            parts.insert(0, e.pooled_history())
        profile = torch.cat(parts, -1)
        if self.cfg.attention_len is None:
            valid, distance = e.mask, positions_from_newest(e.lengths, e.mask.shape[1])
        else:  # gather the newest W events of the left-aligned history
            W = self.cfg.attention_len
            j = torch.arange(W, device=e.mask.device).unsqueeze(0)
            idx = e.lengths.unsqueeze(1) - W + j  # [B, W]
            valid, distance = idx >= 0, (W - 1 - j).expand_as(idx)
            hist = hist.gather(1, idx.clamp(min=0).unsqueeze(-1).expand(-1, -1, hist.shape[-1]))
        return DINState(hist, valid, profile, e.seq_category_ids, e.mask, distance)

    def _logits(self, s: DINState, v: torch.Tensor, cross: torch.Tensor | None) -> torch.Tensor:
        """v [B, C, 2e], cross [B, C, n] or None -> logits [B, C]."""
        C, L, e2 = v.shape[1], s.hist.shape[1], v.shape[-1]
        h = s.hist.unsqueeze(1).expand(-1, C, -1, -1)  # [B, C, L, 2e (+e)]
        vv = v.unsqueeze(2).expand(-1, -1, L, -1)  # [B, C, L, 2e]
        hh = h[..., :e2]
        parts = [hh, vv, hh - vv, hh * vv] + ([h[..., e2:]] if self.cfg.history_action else [])
        w = self.unit(torch.cat(parts, -1)).squeeze(-1)  # [B, C, L]
        if self.recency is not None:
            w = w + self.recency(s.distance)[0].unsqueeze(1)
        valid = s.valid.unsqueeze(1)
        if self.cfg.weight_norm == "softmax":
            w = torch.softmax(w.masked_fill(~valid, torch.finfo(w.dtype).min), -1)
        w = w * valid.to(w.dtype)
        if self.cfg.weight_norm == "mean":
            w = w / valid.sum(-1, keepdim=True).clamp(min=1).to(w.dtype)
        interest = torch.matmul(w, s.hist)  # [B, C, 2e (+e)]
        prof = s.profile.unsqueeze(1).expand(-1, v.shape[1], -1)
        parts = [interest, prof, v] + ([cross] if cross is not None else [])
        if self.dot is not None:
            e = v.shape[-1] // 2
            own = prof[..., -3 * e :] if self.cfg.profile == "sum" else prof[..., -2 * e :]  # (pooled), user, domain
            parts.append(self.dot([*own.split(e, -1), *interest.split(e, -1), *v.split(e, -1)]))
        return self.mlp(torch.cat(parts, -1)).squeeze(-1)

    def forward(self, batch: RankingBatch, return_aux: bool = False):
        e = self.embedder(batch)
        s = self._state(e)
        # the batch's own candidate through the embedder's candidate path (not embed_candidates)
        v = torch.cat([e.cand["item_id"], e.cand["item_category"]], -1).unsqueeze(1)
        logits = self._logits(s, v, None if e.cross is None else e.cross.unsqueeze(1))[:, 0]
        return (logits, torch.zeros((), device=logits.device)) if return_aux else logits

    def encode_user(self, batch: RankingBatch) -> DINState:
        return self._state(self.embedder(batch))

    def score(self, state: DINState, candidates: Candidates) -> torch.Tensor:
        c = self.embedder.embed_candidates(candidates)
        v = torch.cat([c["item_id"], c["item_category"]], -1)
        cross = self.embedder.cross_features(state.seq_category, state.mask, self.embedder.candidate_category_ids(candidates))
        k = self.cfg.score_chunk
        return torch.cat(
            [self._logits(state, v[:, i : i + k], None if cross is None else cross[:, i : i + k]) for i in range(0, v.shape[1], k)], 1
        )


__all__ = ["DINConfig", "DINRanker", "DINState"]
