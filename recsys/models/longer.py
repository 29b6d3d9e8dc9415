"""LONGER — long-sequence ranker (arXiv 2505.04421, RecSys'25), following ../shared/MODELS.md.

Pipeline for one (user, candidate) row:
1. History items: [item, category, action, domain] embeddings (SparseEmbedder, TorchRec) -> side info
   (time gap to the request concatenated, learnable absolute position embedding added, MLP to `item_dim`;
   recsys.layers.side_info).
2. Token merge: K = `merge_k` adjacent items -> one token (concatenation + projection to `d_model`), optional
   InnerTrans (one small transformer block inside each group; recsys.layers.token_merge).
3. Global tokens (m = len(`global_tokens`)): candidate item ([item, category] -> d_model), learnable CLS token(s),
   user-id embedding, request-domain embedding, and `cross`: the paper's "compressed user-item features" — the
   embedder's user x candidate cross features (embedding.category_share) projected to d_model.
4. Layer 1, cross-causal: queries = the m global tokens + the k = `recent_k` most recent merged tokens;
   keys/values = all merged tokens + the global tokens.
5. `self_layers` self-causal layers over the k + m tokens.
6. Head: MLP over the concatenated final global-token outputs -> logit. Loss: BCE (in the trainer).

Visibility rule (every layer, `visibility_mask`): a sequence token attends only to sequence tokens that are not
newer than itself (merged-token order), never to padding (except a padded query to itself, to stay finite) and
never to global tokens; a global token attends to every real sequence token and every global token.
Consequence: every sequence-token state in every layer is candidate-independent (tested bit-for-bit), so
`encode_user` computes the sequence side once and returns its per-layer K/V (the KV cache), and
`score(state, candidates)` runs only the C candidates' m global tokens against that cache, batched over C.
`forward` is the genuine full forward over all tokens with the mask (it does not go through the cache), which is
what the two-stage equivalence test compares against.

[ours] decisions:
- Padding layout: the embedder's histories are left-aligned (newest at length-1). We gather them into a
  right-aligned layout padded at the front to a multiple of K (Lp = ceil(L/K)*K), so the newest item is always at
  Lp-1, groups are formed from the newest backwards (only the oldest group can be partial), "the k most recent merged
  tokens" is the static slice [T-k, T), and key order = time order for the causal rule. When a user has fewer than
  k merged tokens, the missing ones are padding: masked as keys, their outputs ignored.
- Positions for the absolute position embedding count from the newest event (0 = newest, `position: from_newest`),
  so a position means the same recency for every user whatever the history length; `from_oldest` is the knob.
- Causality is at merged-token granularity: a merged token sees its own group and older groups (its own K items
  are in its own token anyway).
- m defaults to 4 (candidate, CLS, user, domain); CLS may be listed more than once for several learnable tokens.
- Widths: the paper's merged token is the concatenation itself (width K*d). We project it to `d_model` so the
  block width is a free knob; the defaults keep d_model = K * item_dim (8 * 8 = 64), i.e. no compression. In a
  toy sanity run (a label decided by the newest item's category, 300 Adam steps) a compressing projection
  (d_model < K * item_dim) and InnerTrans both slowed down learning to read a single item out of a merged token;
  K=8 with InnerTrans is still the default because it is the paper's best setting at scale.
- Norm placement: pre-norm by default; `norm: hybrid` is HybridNorm (QKV-norm + Post-Norm FFN), `post` is Post-Norm.
- Head: final norm (pre-norm only) then an MLP over the m concatenated global outputs.
- `recency_bias` (not in the paper; on in configs/, off by default so models exported before it load unchanged):
  every block adds a learnable score per head and log2 bucket of the query-key distance in merged tokens
  (recsys/layers/recency_bias.py, zero-initialised; HSTU's relative attention bias). A global query counts as
  standing at the newest merged token; global keys get no bias. The bias depends on positions only, so the sequence
  side stays candidate-independent and the KV cache exact.
- `attention_mass` (not in the paper; on in configs/, off by default so models exported before it load unchanged):
  the head also reads, per global token and head, the layer-1 attention mass over the sequence keys, log(1 + sum_s
  exp(score_s)) (MultiHeadAttention.mass): how strongly the candidate matches the (recent) history at all, which the
  softmax-normalised outputs hide (DIN's "intensity"). From the cached layer-1 keys in `score`, so the two paths
  stay equal.
- `match_bias` (not in the paper; on in configs/, off by default so models exported before it load unchanged): in
  layer 1 the global queries add a learnable score per head times the fraction of a merged token's items in the
  candidate's category (recsys/layers/match_bias.py: SIM's hard-search signal). Candidate-dependent, so only global
  queries get it; the state keeps the keys' category ids.
- Training engineering: `bf16` wraps the dense part (after the embedding lookup) in bf16 autocast, logits are
  returned in fp32; `activation_checkpointing` recomputes the side-info/merge stage and every block in backward
  (torch.utils.checkpoint, non-reentrant).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from recsys.config import StrictModel
from recsys.data.batch import SEQ_KEYS, BatchSpec, Candidates, RankingBatch
from recsys.layers.attention import KV
from recsys.layers.block import TransformerBlock
from recsys.layers.embedding import EmbeddedBatch, EmbeddingSettings, SparseEmbedder
from recsys.layers.mlp import MLP
from recsys.layers.norms import NormPlacement, NormType, make_norm
from recsys.layers.match_bias import CategoryMatchBias
from recsys.layers.recency_bias import RecencyBias
from recsys.layers.side_info import SequenceSideInfo
from recsys.layers.token_merge import TokenMerge
from recsys.models.base import DenseOptionsMixin, Ranker

GlobalToken = Literal["candidate", "cls", "user", "domain", "cross"]


class LongerConfig(StrictModel):
    name: Literal["longer"] = "longer"
    embedding: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    d_model: int = Field(64, gt=0, description="width of merged and global tokens")
    heads: int = Field(4, gt=0)
    item_dim: int = Field(8, gt=0, description="width of one item token after the side-info MLP (d in the paper)")
    merge_k: int = Field(8, gt=0, description="items per merged token (K); paper's best: 8 at L=2000")
    inner_trans: bool = Field(True, description="one small transformer block over the K items of each group")
    inner_heads: int = Field(2, gt=0)
    recent_k: int = Field(100, gt=0, description="most recent merged tokens used as layer-1 queries (k)")
    self_layers: int = Field(2, ge=0, description="self-causal layers after the cross-causal one (N)")
    ffn_mult: int = Field(4, gt=0)
    norm: NormPlacement = Field("pre", description="pre | post | hybrid (HybridNorm)")
    norm_type: NormType = "layernorm"
    global_tokens: list[GlobalToken] = Field(default_factory=lambda: ["candidate", "cls", "user", "domain"])
    time_buckets: int = Field(32, gt=0, description="log2 buckets of the time gap")
    time_dim: int = Field(8, gt=0)
    position: Literal["from_newest", "from_oldest"] = "from_newest"
    head_hidden: list[int] = Field(default_factory=lambda: [128, 64])
    recency_bias: bool = Field(False, description="learnable attention bias per head and log2 query-key distance")
    attention_mass: bool = Field(False, description="head also gets each global token's layer-1 attention mass per head")
    match_bias: bool = Field(False, description="layer-1 bias per head for merged tokens by their share of the candidate's category")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    bf16: bool = Field(False, description="bf16 autocast for the dense part (training engineering, paper)")
    activation_checkpointing: bool = Field(False, description="torch.utils.checkpoint per block while training")

    @model_validator(mode="after")
    def _check(self) -> "LongerConfig":
        if self.global_tokens.count("candidate") != 1:
            raise ValueError("global_tokens must contain 'candidate' exactly once")
        for t in ("user", "domain", "cross"):
            if self.global_tokens.count(t) > 1:
                raise ValueError(f"global_tokens lists {t!r} more than once (only 'cls' may repeat)")
        if "cross" in self.global_tokens and not self.embedding.category_share:
            raise ValueError("global_tokens lists 'cross' but embedding.category_share is empty (no cross features)")
        if self.d_model % self.heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by heads={self.heads}")
        if self.inner_trans and self.item_dim % self.inner_heads:
            raise ValueError(f"item_dim={self.item_dim} is not divisible by inner_heads={self.inner_heads}")
        return self


@dataclass
class LongerState:
    """The user side of LONGER for serving: per-layer K/V of the sequence tokens (layer 0 = the cross-causal layer
    over all merged tokens, then one entry per self-causal layer over the k most recent), their validity masks,
    and the user/domain embeddings for the global tokens."""

    kv: list[KV]
    valid: list[torch.Tensor]  # [B, T_layer] bool per layer
    user: torch.Tensor  # [B, e]
    domain: torch.Tensor  # [B, e]
    key_category: torch.Tensor  # [B, T, K] category ids of the layer-1 keys' items (category-match bias)
    key_item_valid: torch.Tensor  # [B, T, K] bool

    def nbytes(self) -> int:
        ts = [t for kv in self.kv for t in (kv.k, kv.v)] + self.valid
        ts += [self.user, self.domain, self.key_category, self.key_item_valid]
        return sum(t.numel() * t.element_size() for t in ts)


def visibility_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, k_valid: torch.Tensor, n_global: int) -> torch.Tensor:
    """LONGER's attention mask, True = visible: [B, Nq + m, Nk + m] (queries: Nq sequence tokens then m globals;
    keys: Nk sequence tokens then the same m globals).

    q_pos [Nq] / k_pos [Nk]: merged-token positions (time order, larger = newer); k_valid [B, Nk]: real keys.
    sequence query t -> sequence key s iff s <= t and (s is real or s == t); never a global key.
    global query -> every real sequence key and every global key.
    """
    B = k_valid.shape[0]
    not_newer = k_pos.unsqueeze(0) <= q_pos.unsqueeze(1)  # [Nq, Nk]
    same = k_pos.unsqueeze(0) == q_pos.unsqueeze(1)
    seq_seq = not_newer.unsqueeze(0) & (k_valid.unsqueeze(1) | same.unsqueeze(0))  # [B, Nq, Nk]
    if n_global == 0:
        return seq_seq
    Nq = q_pos.shape[0]
    dev = k_valid.device
    seq_glob = torch.zeros(B, Nq, n_global, dtype=torch.bool, device=dev)
    glob_seq = k_valid.unsqueeze(1).expand(B, n_global, k_valid.shape[1])
    glob_glob = torch.ones(B, n_global, n_global, dtype=torch.bool, device=dev)
    return torch.cat([torch.cat([seq_seq, seq_glob], 2), torch.cat([glob_seq, glob_glob], 2)], 1)


class LongerRanker(DenseOptionsMixin, Ranker):
    def __init__(self, cfg: LongerConfig, spec: BatchSpec):
        super().__init__()
        self.cfg = cfg
        e, D = cfg.embedding.dim, cfg.d_model
        self.embedder = SparseEmbedder(spec, cfg.embedding)
        self.side_info = SequenceSideInfo(len(SEQ_KEYS) * e, cfg.item_dim, spec.max_len, cfg.time_buckets, cfg.time_dim)
        self.merge = TokenMerge(
            cfg.item_dim, cfg.merge_k, D, cfg.inner_trans, cfg.inner_heads, ffn_mult=2, norm=cfg.norm, norm_type=cfg.norm_type
        )
        self.m = len(cfg.global_tokens)
        self.cand_proj = nn.Linear(2 * e, D)
        n_cls = cfg.global_tokens.count("cls")
        self.cls = nn.Parameter(torch.randn(max(n_cls, 1), D) * 0.02) if n_cls else None
        self.user_proj = nn.Linear(e, D) if "user" in cfg.global_tokens else None
        self.domain_proj = nn.Linear(e, D) if "domain" in cfg.global_tokens else None
        self.cross_proj = nn.Linear(self.embedder.n_cross, D) if "cross" in cfg.global_tokens else None

        def block() -> TransformerBlock:
            return TransformerBlock(D, cfg.heads, cfg.ffn_mult, cfg.norm, cfg.norm_type, cfg.dropout)

        self.cross = block()
        self.layers = nn.ModuleList([block() for _ in range(cfg.self_layers)])
        self.recency = (
            nn.ModuleList([RecencyBias(cfg.heads) for _ in range(1 + cfg.self_layers)]) if cfg.recency_bias else None
        )
        self.match = CategoryMatchBias(cfg.heads) if cfg.match_bias else None
        self.final_norm = make_norm(cfg.norm_type, D) if cfg.norm == "pre" else nn.Identity()
        self.head = MLP(self.m * (D + (cfg.heads if cfg.attention_mass else 0)), cfg.head_hidden, 1, cfg.dropout)

    # -- sequence side -------------------------------------------------------------------------------------
    def _right_aligned(self, e: EmbeddedBatch) -> tuple[torch.Tensor, ...]:
        """Left-aligned [B, L] history -> right-aligned [B, Lp] (Lp = ceil(L/K)*K, newest at Lp-1)."""
        B, L = e.mask.shape
        K = self.cfg.merge_k
        Lp = max(math.ceil(L / K), 1) * K
        n = e.lengths.to(torch.long)
        p = torch.arange(Lp, device=n.device)
        src = p.unsqueeze(0) - (Lp - n).unsqueeze(1)  # [B, Lp] index into the left-aligned layout
        valid = src >= 0
        idx = src.clamp(min=0)
        feats = torch.cat([e.seq[k] for k in SEQ_KEYS], -1)
        feats = feats.gather(1, idx.unsqueeze(-1).expand(B, Lp, feats.shape[-1]))
        gap = e.time_gap.gather(1, idx)
        pos = (Lp - 1 - p).unsqueeze(0).expand(B, Lp) if self.cfg.position == "from_newest" else idx
        return feats, gap, pos, valid, e.seq_category_ids.gather(1, idx)

    def _tokens(self, feats, gap, pos, valid):
        items = self.side_info(feats, gap, pos, valid)
        return self.merge(items, valid)

    def sequence_tokens(self, e: EmbeddedBatch) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Merged sequence tokens [B, T, d_model] (oldest -> newest, front-padded), their validity [B, T], and the
        category ids and validity of their items [B, T, K] each (for the category-match bias)."""
        feats, gap, pos, valid, cats = self._right_aligned(e)
        x, x_valid = self._run(self._tokens, feats, gap, pos, valid)
        K = self.cfg.merge_k
        return x, x_valid, (cats.view(cats.shape[0], -1, K), valid.view(valid.shape[0], -1, K))

    # -- global side ---------------------------------------------------------------------------------------
    def global_tokens(self, item: torch.Tensor, category: torch.Tensor, user: torch.Tensor, domain: torch.Tensor,
                      cross: torch.Tensor | None = None) -> torch.Tensor:
        """item/category [B, (C,) e], user/domain [B, e], cross [B, (C,) n] (the embedder's user x candidate cross
        features, for a 'cross' token) -> [B, (C,) m, d_model] in `global_tokens` order."""
        lead = item.shape[:-1]
        extra = len(lead) - 1

        def per_user(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(x.shape[0], *([1] * extra), x.shape[-1]).expand(*lead, x.shape[-1])

        toks, n_cls = [], 0
        for kind in self.cfg.global_tokens:
            if kind == "candidate":
                toks.append(self.cand_proj(torch.cat([item, category], -1)))
            elif kind == "cls":
                toks.append(self.cls[n_cls].expand(*lead, -1))
                n_cls += 1
            elif kind == "user":
                toks.append(per_user(self.user_proj(user)))
            elif kind == "cross":
                toks.append(self.cross_proj(cross.to(item.dtype)))
            else:
                toks.append(per_user(self.domain_proj(domain)))
        return torch.stack(toks, -2)

    def _head(self, g: torch.Tensor, mass: torch.Tensor | None) -> torch.Tensor:
        """Final global outputs g [..., m, D] (+ their layer-1 attention mass [..., m * H]) -> logits [...]."""
        g = self.final_norm(g).flatten(-2)
        return self.head(g if mass is None else torch.cat([g, mass.to(g.dtype)], -1)).squeeze(-1)

    def _mass(self, g: torch.Tensor, k: torch.Tensor, valid: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
        """Layer-1 attention mass of the global input tokens g [B, C, m, D] over the sequence keys k [B, H, T, hd]
        with their bias (`_global_bias`) -> [B, C, m * H] (None without `attention_mass`)."""
        if not self.cfg.attention_mass:
            return None
        q = self.cross.attn.project_q(self.cross._in(g))  # [B, C, H, m, hd]
        return self.cross.attn.mass(q, k, valid, bias).transpose(-1, -2).flatten(-2)  # [B, C, H, m] -> [B, C, m*H]

    # -- attention biases -----------------------------------------------------------------------------------
    def _bias(self, layer: int, q_pos: torch.Tensor, k_pos: torch.Tensor, n_global: int) -> torch.Tensor | None:
        """Additive scores [H, Nq + m, Nk + m] for block `layer` (None without `recency_bias`): sequence query t ->
        sequence key s by distance t - s, a global query as if at the newest key, global keys 0."""
        if self.recency is None:
            return None
        newest = k_pos[-1:]
        q = torch.cat([q_pos, newest.expand(n_global)])
        b = self.recency[layer](q.unsqueeze(1) - k_pos.unsqueeze(0))  # [H, Nq + m, Nk]
        return torch.cat([b, b.new_zeros(b.shape[0], b.shape[1], n_global)], 2)

    def _shared_bias(self, layer: int, n_keys: int, device: torch.device) -> torch.Tensor | None:
        """[1, 1, H, 1, Nk] recency scores of a global query for the cached sequence keys of block `layer`."""
        if self.recency is None:
            return None
        return self.recency[layer](torch.arange(n_keys - 1, -1, -1, device=device))[None, None, :, None, :]

    def _global_bias(self, key_cats: tuple[torch.Tensor, torch.Tensor], cand_cats: torch.Tensor) -> torch.Tensor | None:
        """Layer-1 scores of the global queries for the T sequence keys, broadcastable to [B, C, H, m, T]: recency
        plus the category match of each merged token with the candidate (cand_cats [B, C])."""
        T = key_cats[0].shape[1]
        bias = self._shared_bias(0, T, cand_cats.device)
        if self.match is not None:
            mb = self.match(CategoryMatchBias.match(*key_cats, cand_cats)).unsqueeze(3)  # [B, C, H, 1, T]
            bias = mb if bias is None else bias + mb
        return bias

    def _cross_bias(self, global_bias: torch.Tensor | None, q_pos: torch.Tensor, pos: torch.Tensor) -> torch.Tensor | None:
        """The full layer-1 bias [B, H, kq + m, T + m]: recency for the sequence queries, `global_bias` (one
        candidate per row, [B or 1, 1, H, 1, T]) for the global queries' sequence keys, 0 for global keys."""
        if global_bias is None:
            return None
        glob = global_bias[:, 0].expand(-1, -1, self.m, -1)  # [B, H, m, T]
        rab = self._bias(0, q_pos, pos, 0)  # [H, kq, T] or None
        if rab is None:
            seq = glob.new_zeros(glob.shape[0], glob.shape[1], q_pos.shape[0], glob.shape[-1])
        else:
            seq = rab.unsqueeze(0).expand(glob.shape[0], -1, -1, -1)
        return F.pad(torch.cat([seq, glob], 2), (0, self.m))

    # -- full forward ---------------------------------------------------------------------------------------
    def forward_states(self, batch: RankingBatch, keep_states: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The full forward over all tokens with the mask. Returns (logits [B], sequence-token states per layer:
        [merged tokens (layer input), layer-1 outputs of the k recent tokens, each self layer's outputs])."""
        e = self.embedder(batch)
        states: list[torch.Tensor] = []
        with self._autocast(batch.labels.device):
            x, valid, key_cats = self.sequence_tokens(e)
            g = self.global_tokens(e.cand["item_id"], e.cand["item_category"], e.user, e.domain, e.cross)
            T = x.shape[1]
            kq = min(self.cfg.recent_k, T)
            pos = torch.arange(T, device=x.device)
            q_pos = pos[T - kq :]
            keys = torch.cat([x, g.to(x.dtype)], 1)
            queries = torch.cat([x[:, T - kq :], g.to(x.dtype)], 1)
            gbias = self._global_bias(key_cats, e.cand_category_ids.unsqueeze(1))  # [B|1, 1, H, 1, T]
            h = self._run(self.cross, queries, keys, visibility_mask(q_pos, pos, valid, self.m), None,
                          self._cross_bias(gbias, q_pos, pos))
            if keep_states:
                states += [x, h[:, :kq]]
            mask = visibility_mask(q_pos, q_pos, valid[:, T - kq :], self.m)
            for i, blk in enumerate(self.layers):
                h = self._run(blk, h, None, mask, None, self._bias(i + 1, q_pos, q_pos, self.m))
                if keep_states:
                    states.append(h[:, :kq])
            mass = None
            if self.cfg.attention_mass:
                mass = self._mass(g.to(x.dtype).unsqueeze(1), self.cross.kv(x).k, valid, gbias)[:, 0]
            logits = self._head(h[:, kq:], mass)
        return logits.float(), states

    def forward(self, batch: RankingBatch, return_aux: bool = False):
        logits, _ = self.forward_states(batch)
        return (logits, torch.zeros((), device=logits.device)) if return_aux else logits

    # -- two-stage serving ----------------------------------------------------------------------------------
    def encode_user(self, batch: RankingBatch) -> LongerState:
        """Sequence side once per user: per-layer K/V of the (candidate-independent) sequence tokens."""
        e = self.embedder(batch)
        with self._autocast(batch.labels.device):
            x, valid, key_cats = self.sequence_tokens(e)
            T = x.shape[1]
            kq = min(self.cfg.recent_k, T)
            pos = torch.arange(T, device=x.device)
            q_pos = pos[T - kq :]
            q_valid = valid[:, T - kq :]
            kv = self.cross.kv(x)
            kvs, valids = [kv], [valid]
            if self.layers:
                h = self.cross(
                    x[:, T - kq :], kv=kv, mask=visibility_mask(q_pos, pos, valid, 0), bias=self._bias(0, q_pos, pos, 0)
                )
                mask = visibility_mask(q_pos, q_pos, q_valid, 0)
                for i, blk in enumerate(self.layers):
                    kv = blk.kv(h)
                    kvs.append(kv)
                    valids.append(q_valid)
                    if i + 1 < len(self.layers):
                        h = blk(h, kv=kv, mask=mask, bias=self._bias(i + 1, q_pos, q_pos, 0))
        return LongerState(
            kv=kvs, valid=valids, user=e.user, domain=e.domain, key_category=key_cats[0], key_item_valid=key_cats[1]
        )

    def score(self, state: LongerState, candidates: Candidates) -> torch.Tensor:
        """C candidates per user through the cache: only their m global tokens run, batched over C -> [B, C]."""
        c = self.embedder.embed_candidates(candidates)
        cand_cats = self.embedder.candidate_category_ids(candidates)
        cross = None
        if self.cross_proj is not None:  # from the cached right-aligned category ids (distance from newest: Lp-1-j)
            cats, ok = state.key_category.flatten(1), state.key_item_valid.flatten(1)
            pos = torch.arange(cats.shape[1] - 1, -1, -1, device=cats.device).expand_as(cats)
            cross = self.embedder.cross_features(cats, ok, cand_cats, pos)
        with self._autocast(candidates.item_id.device):
            g = g_in = self.global_tokens(c["item_id"], c["item_category"], state.user, state.domain, cross)  # [B, C, m, D]
            gbias = self._global_bias((state.key_category, state.key_item_valid), cand_cats)  # layer 1
            for i, (blk, kv, valid) in enumerate(zip([self.cross, *self.layers], state.kv, state.valid)):
                bias = gbias if i == 0 else self._shared_bias(i, valid.shape[1], g.device)
                g = blk.forward_cached(g, kv, valid, shared_bias=bias)
            return self._head(g, self._mass(g_in, state.kv[0].k, state.valid[0], gbias)).float()


__all__ = ["LongerConfig", "LongerRanker", "LongerState", "visibility_mask"]
