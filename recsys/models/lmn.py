"""LMN — Large Memory Network (arXiv 2502.05558): a product-key memory shared by all users, read once per history
item with a user-aware query, pooled by target attention with the candidate.

Per history item i of user u (only real positions; padding never reaches the memory):
  query_i   = MLP([item_i, category_i, user_u])                       user-aware query (heads x key_dim)
  readout_i = PKM(query_i)                                             top-K slots of n = n_keys**2, weighted bag
  side_i    = SideInfo([item_i, category_i], gap_i, pos_i)             time gap + position from newest -> 2d
  token_i   = [side_i, readout_i]                                      (readout = 0 outside the memory window)
            (`side_info: false`: token_i = [item_i, category_i, readout_i], the paper's token)
Candidate c: target attention (att_heads heads of width att_dim) of [item_c, category_c] over token_1..L (padded
positions masked), then MLP([attention output, (attention mass), item_c, category_c, user, domain, (profile), (cross features)])
-> logit.
Everything except the last step is candidate-independent, so `encode_user` caches the attention keys/values and
`score` runs only the candidates' queries and the head.

Memory loss [ours: target and weight]: the read-out must reconstruct a stop-gradient target of the interaction plus
user information, target_i = sg([item_i + category_i, action_i, user_u]) (3d), through a learned linear decoder:
  L_mem = memory_loss_weight * SmoothL1_beta(decoder(readout_i), target_i), averaged over read positions.
The action (click / like / purchase ...) is deliberately not in the query, so the memory has to store what the user
did with the item, keyed by (user, item). `aux_loss` returns L_mem already weighted; the trainer adds it to the BCE
loss (`forward(batch, return_aux=True)`). Gradients reach the value table, the sub-keys and the query MLP.

[ours] other decisions:
- `memory_len`: only the newest `memory_len` real history items read the memory (None = all, up to max_len). The
  memory's cost is linear in the number of reads (sub-key scoring: reads x n_keys x key_dim per axis, plus top-k);
  at B=64, L=1000-2000 a train step reading every item took ~2.3x the 256-item window's on the shared 2-core CPU
  machine (benchmarks/lmn_memory.py). Older items still take part in the target attention through their
  item/category embeddings.
- Memory size, K, dims and options (UltraMem LayerNorms / sigmoid scores) live in `memory` (ProductKeyMemoryConfig);
  the value table is the TorchRec table `memory.table_name` so DistributedModelParallel shards it. The lookup has a
  fixed number of bags per user (min(memory_len, max_len), empty where there is no read), because a sharded
  table's output exchange needs the same lookup batch size on every rank while the number of reads varies.
  Requirement for the trainer: the same batch size on every rank (the context EBC needs it anyway).
- `side_info` (default true; not in the paper): the [item_i, category_i] part of the attention token is replaced by
  the sequence side info LONGER uses (recsys/layers/side_info.py: time gap to the request as log1p scalar + log2-bucket
  embedding concatenated, learnable absolute position embedding added, MLP back to width 2d), positions counted from
  the newest event (0 = newest), so the candidate's target attention can weight recent behaviour. The token keeps its
  width and the read-out part, and the memory query stays MLP([item_i, category_i, user_u]) (user-aware, no recency);
  Candidate-independent, so `encode_user` caches it inside the attention keys/values. Time-gap buckets/width: the
  layer's defaults (32 / 8).
- `profile` ("none" default, older exports; "sum" in configs/): the head also gets the pooling baseline's
  whole-history vector (`EmbeddedBatch.pooled_history`: mean of the summed item + category + action + domain
  embeddings), the long-term taste beside the recency-weighted attention, as DIN's `profile`.
- `history_action` (on in configs/, off by default so older exports load unchanged): the attention token also
  carries the event's action embedding, token_i = [side([item_i, category_i, action_i]), readout_i]. Our histories
  hold every event, impressions included, so without it the attention cannot tell a shown item from a clicked one
  and only the memory (whose query deliberately has no action) could carry what the user did. The memory query and
  loss target are unchanged. Measured (bench_quality, L=2000, cross features on): truth AUC vs pooling +0.0001
  without it, +0.0001 with it, +0.0002 [+0.0001, +0.0003] with `profile: sum` as well.
- `interaction` ("none" default, older exports): "dot" adds the pooling baseline's DLRM dot interaction
  (recsys/layers/dot_interaction.py) over the head's vectors: user, domain, (profile), each attention head's output
  and the candidate's item and category (needs att_dim == embedding.dim), so the head has what the baseline's has
  ("dot" in configs/). Measured (bench_quality, concurrent topics, 12000 users, L=64, seeds 0-2; truth AUC vs the dot
  pooling baseline of the same seed): with the dots +0.0024 / -0.0011 / +0.0016, without them -0.0010 / -0.0021 /
  -0.0022 (results/bench_quality_concurrent_L64_12k{_lmndot,,_seeds}.json).
- Target attention is scaled dot-product (not DIN's MLP scorer) so scoring C candidates against L items stays
  a pair of batched matmuls.
- `recency_bias` (not in the paper; on in configs/, off by default so models exported before it load unchanged):
  each attention head gets a learnable additive score per log2 bucket of the item's distance from the newest event
  (recsys/layers/recency_bias.py, zero-initialised).
- `attention_mass` (not in the paper; on in configs/, off by default so models exported before it load unchanged):
  each head also hands the head MLP its attention mass log(1 + sum_i exp(score_i))
  (recsys/layers/target_attention.py), the match intensity softmax attention hides.
- `match_bias` (not in the paper; on in configs/, off by default so models exported before it load unchanged): each
  head adds a learnable score to history items in the candidate's category (recsys/layers/match_bias.py: SIM's
  hard-search signal as an attention bias).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from recsys.config import StrictModel
from recsys.data.batch import BatchSpec, Candidates, RankingBatch
from recsys.layers.dot_interaction import DotInteraction, check_dot_widths
from recsys.layers.embedding import EmbeddedBatch, EmbeddingSettings, SparseEmbedder
from recsys.layers.mlp import MLP
from recsys.layers.match_bias import CategoryMatchBias
from recsys.layers.recency_bias import RecencyBias
from recsys.layers.product_key_memory import ProductKeyMemory, ProductKeyMemoryConfig
from recsys.layers.side_info import SequenceSideInfo, positions_from_newest
from recsys.layers.target_attention import masked_target_attention
from recsys.models.base import Ranker


class LMNConfig(StrictModel):
    name: Literal["lmn"] = "lmn"
    embedding: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    memory: ProductKeyMemoryConfig = Field(default_factory=lambda: ProductKeyMemoryConfig(table_name="t_lmn_memory"))
    query_hidden: list[int] = Field(default_factory=lambda: [64], description="hidden widths of the query MLP")
    memory_len: int | None = Field(256, gt=0, description="newest history items that read the memory (None = all)")
    memory_loss_weight: float = Field(0.1, ge=0.0)
    memory_loss_beta: float = Field(1.0, gt=0.0, description="Smooth-L1 transition point")
    att_heads: int = Field(2, gt=0)
    att_dim: int = Field(32, gt=0, description="width per attention head")
    hidden: list[int] = Field(default_factory=lambda: [128, 64])
    side_info: bool = Field(True, description="time gap + position-from-newest side info in the attention tokens")
    recency_bias: bool = Field(False, description="learnable attention bias per head and log2 distance-from-newest bucket")
    attention_mass: bool = Field(False, description="feed each head's attention mass log(1 + sum exp score) to the head MLP")
    match_bias: bool = Field(False, description="learnable attention bias per head for history items in the candidate's category")
    history_action: bool = Field(False, description="the attention tokens also carry each event's action embedding")
    profile: Literal["none", "sum"] = Field("none", description="whole-history summary in the head (sum: the pooling baseline's vector)")
    interaction: Literal["none", "dot"] = Field("none", description="the pooling baseline's DLRM dot interaction, over the head's vectors and each attention head's output")

    @model_validator(mode="after")
    def _check(self) -> "LMNConfig":
        check_dot_widths(self.interaction, "att_dim", self.att_dim, self.embedding.dim)
        return self


@dataclass
class LMNState:
    keys: torch.Tensor  # [B, H, L, att_dim]
    values: torch.Tensor  # [B, H, L, att_dim]
    mask: torch.Tensor  # [B, L] real positions
    user: torch.Tensor  # [B, d]
    domain: torch.Tensor  # [B, d]
    readout: torch.Tensor  # [N, value_dim] memory read-outs of the N read positions (packed)
    slots: torch.Tensor  # [N, heads, top_k] slot ids they read (to inspect memory usage)
    target: torch.Tensor  # [N, 3d] memory-loss target (detached)
    seq_category: torch.Tensor  # [B, L] category ids (for the category-match bias)
    profile: torch.Tensor | None  # [B, d] whole-history vector (`profile: sum`) or None


class LMNRanker(Ranker):
    def __init__(self, cfg: LMNConfig, spec: BatchSpec):
        super().__init__()
        self.cfg = cfg
        # bags per user in the value-table lookup: fixed, so a sharded lookup has the same batch size on every rank
        self.max_len = spec.max_len
        self.window = min(cfg.memory_len or spec.max_len, spec.max_len)
        d, m = cfg.embedding.dim, cfg.memory
        self.embedder = SparseEmbedder(spec, cfg.embedding)
        self.query_net = MLP(3 * d, cfg.query_hidden, m.heads * m.key_dim)
        self.memory = ProductKeyMemory(m)
        self.decoder = nn.Linear(m.value_dim, 3 * d)
        H, a = cfg.att_heads, cfg.att_dim
        # [item, category, (action)] (or its side-info version of width 2d) for the attention tokens
        tok_dim = (3 if cfg.history_action else 2) * d
        self.side_info = SequenceSideInfo(tok_dim, 2 * d, spec.max_len) if cfg.side_info else None
        # keys/values of token [item, category, (action), readout]: one Linear split in two, so the readout part is
        # computed only at the read positions (the readout is 0 elsewhere)
        self.kv = nn.Linear(2 * d if cfg.side_info else tok_dim, 2 * H * a)
        self.kv_mem = nn.Linear(m.value_dim, 2 * H * a, bias=False)
        self.q = nn.Linear(2 * d, H * a)
        p = d if cfg.profile == "sum" else 0
        # dot vectors: (pooled history), user, domain, each head's attention output, candidate item and category
        self.dot = DotInteraction(int(p > 0) + 4 + H) if cfg.interaction == "dot" else None
        n_dot = self.dot.out_dim if self.dot is not None else 0
        self.head = MLP(H * (a + int(cfg.attention_mass)) + 4 * d + p + self.embedder.n_cross + n_dot, cfg.hidden)
        self.recency = RecencyBias(H) if cfg.recency_bias else None
        self.match = CategoryMatchBias(H) if cfg.match_bias else None

    # -- user side -----------------------------------------------------------------------------------------
    def memory_mask(self, e: EmbeddedBatch) -> torch.Tensor:
        """[B, L] positions that read the memory: real items within the newest `memory_len`."""
        L = e.mask.shape[1]
        pos = torch.arange(L, device=e.mask.device).unsqueeze(0)
        return e.mask & (pos >= (e.lengths.unsqueeze(1) - self.window))

    def encode(self, e: EmbeddedBatch) -> LMNState:
        B, L = e.mask.shape
        if L > self.max_len:
            raise ValueError(f"batch history length {L} exceeds the model's BatchSpec.max_len={self.max_len}")
        item, cat = e.seq["seq_item_id"], e.seq["seq_category"]
        b, l = self.memory_mask(e).nonzero(as_tuple=True)
        user_rows = e.user[b]
        item_rows = item[b, l]
        cat_rows = cat[b, l]
        # read i of user b at position l goes to bag b * window + (its index among the user's newest `window` items)
        bag = b * self.window + l - (e.lengths[b] - self.window)
        read = self.memory.read(self.query_net(torch.cat([item_rows, cat_rows, user_rows], -1)), bag, B * self.window)
        readout, slots = read.out, read.slots
        target = torch.cat([item_rows + cat_rows, e.seq["seq_action"][b, l], user_rows], -1).detach()
        H, a = self.cfg.att_heads, self.cfg.att_dim
        tok = torch.cat([item, cat] + ([e.seq["seq_action"]] if self.cfg.history_action else []), -1)
        if self.side_info is not None:
            tok = self.side_info(tok, e.time_gap, positions_from_newest(e.lengths, L), e.mask)
        kv = self.kv(tok).index_put((b, l), self.kv_mem(readout), accumulate=True)
        keys, values = (t.transpose(1, 2) for t in kv.view(B, L, 2, H, a).unbind(2))  # [B, H, L, a] each
        profile = e.pooled_history() if self.cfg.profile == "sum" else None
        return LMNState(keys, values, e.mask, e.user, e.domain, readout, slots, target, e.seq_category_ids, profile)

    def encode_user(self, batch: RankingBatch) -> LMNState:
        return self.encode(self.embedder(batch))

    # -- candidate side ------------------------------------------------------------------------------------
    def _score(self, state: LMNState, item: torch.Tensor, cat: torch.Tensor, cat_ids: torch.Tensor,
               cross: torch.Tensor | None) -> torch.Tensor:
        """item, cat: [B, C, d], cat_ids [B, C], cross [B, C, n] or None -> logits [B, C]."""
        B, C, _ = item.shape
        H, a = self.cfg.att_heads, self.cfg.att_dim
        q = self.q(torch.cat([item, cat], -1)).view(B, C, H, a).transpose(1, 2)  # [B, H, C, a]
        bias = None  # [B, H, C, L]
        if self.recency is not None:  # [H, B, L] -> [B, H, 1, L]
            bias = self.recency(positions_from_newest(state.mask.sum(-1), state.mask.shape[1])).transpose(0, 1).unsqueeze(2)
        if self.match is not None:  # [B, C, H, L] -> [B, H, C, L]
            m = self.match(CategoryMatchBias.match(state.seq_category.unsqueeze(-1), state.mask.unsqueeze(-1), cat_ids))
            bias = m.transpose(1, 2) if bias is None else bias + m.transpose(1, 2)
        att = masked_target_attention(q, state.keys, state.values, state.mask.unsqueeze(1), bias,
                                      return_mass=self.cfg.attention_mass)
        if self.cfg.attention_mass:  # [B, H, C, a] -> [B, C, H*a]; mass [B, H, C] -> [B, C, H]
            parts = [att[0].transpose(1, 2).reshape(B, C, H * a), att[1].transpose(1, 2)]
        else:
            parts = [att.transpose(1, 2).reshape(B, C, H * a)]
        ctx = [state.user, state.domain] + ([state.profile] if state.profile is not None else [])
        ctx = torch.cat(ctx, -1).unsqueeze(1).expand(-1, C, -1)
        parts += [item, cat, ctx] + ([cross] if cross is not None else [])
        if self.dot is not None:  # ctx = user, domain, (profile); parts[0] = the heads' outputs
            parts.append(self.dot([*ctx.split(a, -1), *parts[0].split(a, -1), item, cat]))
        return self.head(torch.cat(parts, -1)).squeeze(-1)

    def score(self, state: LMNState, candidates: Candidates) -> torch.Tensor:
        c = self.embedder.embed_candidates(candidates)
        cat_ids = self.embedder.candidate_category_ids(candidates)
        cross = self.embedder.cross_features(state.seq_category, state.mask, cat_ids)
        return self._score(state, c["item_id"], c["item_category"], cat_ids, cross)

    def aux_loss(self, state: LMNState, batch: RankingBatch) -> torch.Tensor:
        # always through the decoder (also for 0 reads) so every rank's graph uses the same parameters (DDP)
        pred = self.decoder(state.readout)
        loss = F.smooth_l1_loss(pred, state.target, beta=self.cfg.memory_loss_beta, reduction="sum") / max(pred.numel(), 1)
        return self.cfg.memory_loss_weight * loss

    def forward(self, batch: RankingBatch, return_aux: bool = False):
        e = self.embedder(batch)
        state = self.encode(e)
        logits = self._score(state, e.cand["item_id"].unsqueeze(1), e.cand["item_category"].unsqueeze(1),
                             e.cand_category_ids.unsqueeze(1), None if e.cross is None else e.cross.unsqueeze(1))[:, 0]
        if return_aux:
            return logits, self.aux_loss(state, batch)
        return logits


__all__ = ["LMNConfig", "LMNRanker", "LMNState"]
