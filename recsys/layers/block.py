"""One transformer block (attention + FFN) with a choice of norm placement, usable with separate query/key sets
and with a KV cache.

Norm placements (see recsys.layers.norms): "pre" (default), "post", "hybrid" (HybridNorm: QKV-norm inside the
attention + Post-Norm FFN, out = N(x' + FFN(x')) with x' = x + Attn(N(xWq), N(xWk), N(xWv))).

Why `kv()` is separate from `forward`: the keys of a block are computed from its *key* tokens only (after the
block's input norm for pre-norm), so the K/V of candidate-independent tokens can be cached once per user and
reused by `forward_cached` for any number of candidate query groups.
"""
from __future__ import annotations

import torch
from torch import nn

from recsys.layers.attention import KV, MultiHeadAttention
from recsys.layers.norms import NormPlacement, NormType, make_norm


class TransformerBlock(nn.Module):
    def __init__(
        self,
        dim: int,
        heads: int,
        ffn_mult: int = 4,
        norm: NormPlacement = "pre",
        norm_type: NormType = "layernorm",
        dropout: float = 0.0,
    ):
        super().__init__()
        if norm not in ("pre", "post", "hybrid"):
            raise ValueError(f"norm: unknown placement {norm!r}; choose 'pre', 'post' or 'hybrid'")
        self.norm = norm
        self.attn = MultiHeadAttention(dim, heads, qkv_norm=norm_type if norm == "hybrid" else None, dropout=dropout)
        self.norm1 = make_norm(norm_type, dim) if norm in ("pre", "post") else nn.Identity()
        self.norm2 = make_norm(norm_type, dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_mult * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn_mult * dim, dim), nn.Dropout(dropout)
        )

    def _in(self, x: torch.Tensor) -> torch.Tensor:
        """What the attention projections read: N(x) for pre-norm, x otherwise."""
        return self.norm1(x) if self.norm == "pre" else x

    def kv(self, x_kv: torch.Tensor) -> KV:
        """Keys/values of key tokens [..., N, dim] (cacheable when those tokens are candidate-independent)."""
        return self.attn.project_kv(self._in(x_kv))

    def _finish(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Residual + FFN after the attention output `a`, per the norm placement."""
        if self.norm == "pre":
            x = x + a
            return x + self.ffn(self.norm2(x))
        if self.norm == "post":
            x = self.norm1(x + a)
            return self.norm2(x + self.ffn(x))
        x = x + a  # hybrid
        return self.norm2(x + self.ffn(x))

    def forward(
        self,
        x_q: torch.Tensor,
        x_kv: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        kv: KV | None = None,
        bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x_q [B, Nq, dim] attends over x_kv [B, Nk, dim] (default: x_q itself) or a precomputed `kv`;
        `bias` (broadcastable to [B, H, Nq, Nk]): optional additive attention scores."""
        if kv is None:
            kv = self.kv(x_q if x_kv is None else x_kv)
        a = self.attn.attend(self.attn.project_q(self._in(x_q)), kv, mask, bias)
        return self._finish(x_q, a)

    def forward_cached(
        self,
        x_q: torch.Tensor,
        shared: KV,
        shared_valid: torch.Tensor,
        own_mask: torch.Tensor | None = None,
        shared_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x_q [B, C, m, dim]: C query groups per row over the row's cached `shared` K/V plus their own m tokens
        (`shared_bias`, broadcastable to [B, C, H, m, T]: optional additive scores for the shared keys)."""
        h = self._in(x_q)
        a = self.attn.attend_cached(
            self.attn.project_q(h), shared, shared_valid, self.attn.project_kv(h), own_mask, shared_bias
        )
        return self._finish(x_q, a)


__all__ = ["TransformerBlock"]
