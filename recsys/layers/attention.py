"""Masked multi-head attention with separate query and key sets, an explicit boolean visibility mask, optional
QKV-norm (HybridNorm) and the pieces a KV cache needs.

Why not nn.MultiheadAttention: LONGER needs (1) queries that are a subset of the keys (cross-causal first layer),
(2) an arbitrary per-row visibility mask, (3) K/V projected once per user and reused for any number of candidates
(`project_kv` -> `KV`, then `attend` / `attend_cached`), and (4) norms applied to Q, K and V after projection.

Mask convention everywhere: bool, True = the query may see the key. Every query row must see at least one key
(callers guarantee it), so the softmax never divides by zero. `attend` uses `F.scaled_dot_product_attention`
(fused, O(N) memory on CPU and CUDA); `attend_cached` is the serving path: C groups of queries per row read one
shared cached key set plus their own few keys, without materialising the shared keys C times.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from recsys.layers.norms import NormType, make_norm


@dataclass
class KV:
    """Projected keys and values, [..., H, N, head_dim] each (the per-layer entry of a KV cache)."""

    k: torch.Tensor
    v: torch.Tensor


class MultiHeadAttention(nn.Module):
    def __init__(self, dim: int, heads: int, qkv_norm: NormType | None = None, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"heads: width {dim} is not divisible by {heads} heads")
        self.dim, self.heads, self.head_dim, self.dropout = dim, heads, dim // heads, dropout
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        # HybridNorm's QKV-norm: N(xWq), N(xWk), N(xWv), each over the full width before the head split.
        self.qkv_norm = qkv_norm
        if qkv_norm is not None:
            self.q_norm, self.k_norm, self.v_norm = (make_norm(qkv_norm, dim) for _ in range(3))

    # -- shapes ----------------------------------------------------------------------------------------------
    def _split(self, x: torch.Tensor) -> torch.Tensor:
        """[..., N, dim] -> [..., H, N, head_dim]."""
        *lead, n, _ = x.shape
        return x.reshape(*lead, n, self.heads, self.head_dim).transpose(-2, -3)

    def _merge(self, x: torch.Tensor) -> torch.Tensor:
        """[..., H, N, head_dim] -> [..., N, dim]."""
        x = x.transpose(-2, -3)
        return x.reshape(*x.shape[:-2], self.dim)

    # -- projections -----------------------------------------------------------------------------------------
    def project_q(self, x: torch.Tensor) -> torch.Tensor:
        q = self.q_proj(x)
        if self.qkv_norm is not None:
            q = self.q_norm(q)
        return self._split(q)

    def project_kv(self, x: torch.Tensor) -> KV:
        k, v = self.k_proj(x), self.v_proj(x)
        if self.qkv_norm is not None:
            k, v = self.k_norm(k), self.v_norm(v)
        return KV(self._split(k), self._split(v))

    # -- attention -------------------------------------------------------------------------------------------
    def attend(self, q: torch.Tensor, kv: KV, mask: torch.Tensor | None, bias: torch.Tensor | None = None) -> torch.Tensor:
        """q [B, H, Nq, hd], kv [B, H, Nk, hd], mask bool broadcastable to [B, H, Nq, Nk] -> [B, Nq, dim].
        bias: optional additive scores broadcastable to [B, H, Nq, Nk], applied where the mask is True."""
        if mask is not None and mask.dim() == 3:
            mask = mask.unsqueeze(1)
        if bias is not None:
            bias = bias.to(q.dtype)
            mask = bias if mask is None else bias.masked_fill(~mask, float("-inf"))
        o = F.scaled_dot_product_attention(
            q, kv.k.to(q.dtype), kv.v.to(q.dtype), attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out_proj(self._merge(o))

    def mass(self, q: torch.Tensor, k: torch.Tensor, valid: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """Attention mass log(1 + sum over valid keys of exp(score)) per query group, head and query:
        q [B, C, H, N, hd], k [B, H, T, hd] (shared by the C groups), valid [B, T] bool, bias broadcastable to
        [B, C, H, N, T] or None -> [B, C, H, N] (0 when no key is valid). It says how strongly a query matches the
        keys at all, which the softmax-normalised output does not."""
        s = torch.matmul(q, k.to(q.dtype).unsqueeze(1).transpose(-1, -2)) * self.head_dim**-0.5
        if bias is not None:
            s = s + bias.to(s.dtype)
        s = s.masked_fill(~valid[:, None, None, None, :], torch.finfo(s.dtype).min)
        return torch.logsumexp(torch.cat([s, s.new_zeros(*s.shape[:-1], 1)], -1), -1)

    def forward(
        self, x_q: torch.Tensor, x_kv: torch.Tensor | None = None, mask: torch.Tensor | None = None, kv: KV | None = None
    ) -> tuple[torch.Tensor, KV]:
        """Attention of x_q [B, Nq, dim] over x_kv [B, Nk, dim] (or precomputed `kv`); returns (out, kv)."""
        if kv is None:
            kv = self.project_kv(x_q if x_kv is None else x_kv)
        return self.attend(self.project_q(x_q), kv, mask), kv

    def attend_cached(
        self,
        q: torch.Tensor,
        shared: KV,
        shared_valid: torch.Tensor,
        own: KV,
        own_mask: torch.Tensor | None = None,
        shared_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """C query groups per row over one shared (cached) key set plus each group's own keys.

        q: [B, C, H, m, hd]; shared: [B, H, T, hd] (the same for all C groups of a row); shared_valid: [B, T] bool
        (visible to every query); own: [B, C, H, m', hd]; own_mask: [m, m'] bool or None (all visible);
        shared_bias: optional additive scores for the shared keys, broadcastable to [B, C, H, m, T].
        Returns [B, C, m, dim]. Equals `attend` over the concatenated keys with the matching mask and bias.
        """
        B, C, H, m, hd = q.shape
        T = shared.k.shape[-2]
        scale = hd**-0.5
        neg = torch.finfo(q.dtype).min
        qf = q.permute(0, 2, 1, 3, 4).reshape(B, H, C * m, hd)
        s_shared = torch.matmul(qf, shared.k.to(q.dtype).transpose(-1, -2)) * scale  # [B, H, C*m, T]
        s_shared = s_shared.view(B, H, C, m, T).permute(0, 2, 1, 3, 4)  # [B, C, H, m, T]
        if shared_bias is not None:
            s_shared = s_shared + shared_bias.to(q.dtype)
        s_shared = s_shared.masked_fill(~shared_valid[:, None, None, None, :], neg)
        s_own = torch.matmul(q, own.k.transpose(-1, -2)) * scale  # [B, C, H, m, m']
        if own_mask is not None:
            s_own = s_own.masked_fill(~own_mask, neg)
        p = torch.softmax(torch.cat([s_shared, s_own], -1), dim=-1)
        if self.training and self.dropout:
            p = F.dropout(p, self.dropout)
        p_shared, p_own = p.split([T, p.shape[-1] - T], dim=-1)
        # exact zeros for invisible keys (the -min fill already underflows to 0; this keeps it explicit)
        p_shared = p_shared * shared_valid[:, None, None, None, :].to(p.dtype)
        o_shared = torch.matmul(p_shared.permute(0, 2, 1, 3, 4).reshape(B, H, C * m, T), shared.v.to(q.dtype))
        o_shared = o_shared.view(B, H, C, m, hd).permute(0, 2, 1, 3, 4)
        o = o_shared + torch.matmul(p_own, own.v)
        return self.out_proj(self._merge(o))


__all__ = ["KV", "MultiHeadAttention"]
