"""LONGER — long-sequence ranker (arXiv 2505.04421, RecSys'25), following ../shared/MODELS.md.

Pipeline for one (user, candidate) row:
1. History items: [item, category, action, domain] embeddings (SparseEmbedder, TorchRec) -> side info
   (time gap to the request concatenated, learnable absolute position embedding added, MLP to `item_dim`;
   recsys.layers.side_info).
2. Token merge: K = `merge_k` adjacent items -> one token (concatenation + projection to `d_model`), optional
   InnerTrans (one small transformer block inside each group; recsys.layers.token_merge).
3. Global tokens (m = len(`global_tokens`)): candidate item ([item, category] -> d_model), learnable CLS token(s),
   user-id embedding, request-domain embedding.
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
- Training engineering: `bf16` wraps the dense part (after the embedding lookup) in bf16 autocast, logits are
  returned in fp32; `activation_checkpointing` recomputes the side-info/merge stage and every block in backward
  (torch.utils.checkpoint, non-reentrant).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from recsys.config import StrictModel
from recsys.data.batch import SEQ_KEYS, BatchSpec, Candidates, RankingBatch
from recsys.layers.attention import KV
from recsys.layers.block import TransformerBlock
from recsys.layers.embedding import EmbeddedBatch, EmbeddingSettings, SparseEmbedder
from recsys.layers.mlp import MLP
from recsys.layers.norms import NormPlacement, NormType, make_norm
from recsys.layers.side_info import SequenceSideInfo
from recsys.layers.token_merge import TokenMerge
from recsys.models.base import DenseOptionsMixin, Ranker

GlobalToken = Literal["candidate", "cls", "user", "domain"]


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
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    bf16: bool = Field(False, description="bf16 autocast for the dense part (training engineering, paper)")
    activation_checkpointing: bool = Field(False, description="torch.utils.checkpoint per block while training")

    @model_validator(mode="after")
    def _check(self) -> "LongerConfig":
        if self.global_tokens.count("candidate") != 1:
            raise ValueError("global_tokens must contain 'candidate' exactly once")
        for t in ("user", "domain"):
            if self.global_tokens.count(t) > 1:
                raise ValueError(f"global_tokens lists {t!r} more than once (only 'cls' may repeat)")
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

    def nbytes(self) -> int:
        ts = [t for kv in self.kv for t in (kv.k, kv.v)] + self.valid + [self.user, self.domain]
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

        def block() -> TransformerBlock:
            return TransformerBlock(D, cfg.heads, cfg.ffn_mult, cfg.norm, cfg.norm_type, cfg.dropout)

        self.cross = block()
        self.layers = nn.ModuleList([block() for _ in range(cfg.self_layers)])
        self.final_norm = make_norm(cfg.norm_type, D) if cfg.norm == "pre" else nn.Identity()
        self.head = MLP(self.m * D, cfg.head_hidden, 1, cfg.dropout)

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
        return feats, gap, pos, valid

    def _tokens(self, feats, gap, pos, valid):
        items = self.side_info(feats, gap, pos, valid)
        return self.merge(items, valid)

    def sequence_tokens(self, e: EmbeddedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Merged sequence tokens [B, T, d_model] (oldest -> newest, front-padded) and their validity [B, T]."""
        feats, gap, pos, valid = self._right_aligned(e)
        return self._run(self._tokens, feats, gap, pos, valid)

    # -- global side ---------------------------------------------------------------------------------------
    def global_tokens(self, item: torch.Tensor, category: torch.Tensor, user: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        """item/category [B, (C,) e], user/domain [B, e] -> [B, (C,) m, d_model] in `global_tokens` order."""
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
            else:
                toks.append(per_user(self.domain_proj(domain)))
        return torch.stack(toks, -2)

    def _head(self, g: torch.Tensor) -> torch.Tensor:
        g = self.final_norm(g)
        return self.head(g.flatten(-2)).squeeze(-1)

    # -- full forward ---------------------------------------------------------------------------------------
    def forward_states(self, batch: RankingBatch, keep_states: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The full forward over all tokens with the mask. Returns (logits [B], sequence-token states per layer:
        [merged tokens (layer input), layer-1 outputs of the k recent tokens, each self layer's outputs])."""
        e = self.embedder(batch)
        states: list[torch.Tensor] = []
        with self._autocast(batch.labels.device):
            x, valid = self.sequence_tokens(e)
            g = self.global_tokens(e.cand["item_id"], e.cand["item_category"], e.user, e.domain)
            T = x.shape[1]
            kq = min(self.cfg.recent_k, T)
            pos = torch.arange(T, device=x.device)
            q_pos = pos[T - kq :]
            keys = torch.cat([x, g.to(x.dtype)], 1)
            queries = torch.cat([x[:, T - kq :], g.to(x.dtype)], 1)
            h = self._run(self.cross, queries, keys, visibility_mask(q_pos, pos, valid, self.m))
            if keep_states:
                states += [x, h[:, :kq]]
            mask = visibility_mask(q_pos, q_pos, valid[:, T - kq :], self.m)
            for blk in self.layers:
                h = self._run(blk, h, None, mask)
                if keep_states:
                    states.append(h[:, :kq])
            logits = self._head(h[:, kq:])
        return logits.float(), states

    def forward(self, batch: RankingBatch, return_aux: bool = False):
        logits, _ = self.forward_states(batch)
        return (logits, torch.zeros((), device=logits.device)) if return_aux else logits

    # -- two-stage serving ----------------------------------------------------------------------------------
    def encode_user(self, batch: RankingBatch) -> LongerState:
        """Sequence side once per user: per-layer K/V of the (candidate-independent) sequence tokens."""
        e = self.embedder(batch)
        with self._autocast(batch.labels.device):
            x, valid = self.sequence_tokens(e)
            T = x.shape[1]
            kq = min(self.cfg.recent_k, T)
            pos = torch.arange(T, device=x.device)
            q_pos = pos[T - kq :]
            q_valid = valid[:, T - kq :]
            kv = self.cross.kv(x)
            kvs, valids = [kv], [valid]
            if self.layers:
                h = self.cross(x[:, T - kq :], kv=kv, mask=visibility_mask(q_pos, pos, valid, 0))
                mask = visibility_mask(q_pos, q_pos, q_valid, 0)
                for i, blk in enumerate(self.layers):
                    kv = blk.kv(h)
                    kvs.append(kv)
                    valids.append(q_valid)
                    if i + 1 < len(self.layers):
                        h = blk(h, kv=kv, mask=mask)
        return LongerState(kv=kvs, valid=valids, user=e.user, domain=e.domain)

    def score(self, state: LongerState, candidates: Candidates) -> torch.Tensor:
        """C candidates per user through the cache: only their m global tokens run, batched over C -> [B, C]."""
        c = self.embedder.embed_candidates(candidates)
        with self._autocast(candidates.item_id.device):
            g = self.global_tokens(c["item_id"], c["item_category"], state.user, state.domain)  # [B, C, m, D]
            for blk, kv, valid in zip([self.cross, *self.layers], state.kv, state.valid):
                g = blk.forward_cached(g, kv, valid)
            return self._head(g).float()


__all__ = ["LongerConfig", "LongerRanker", "LongerState", "visibility_mask"]
