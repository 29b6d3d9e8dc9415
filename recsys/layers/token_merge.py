"""Token merge (LONGER, arXiv 2505.04421): groups of K adjacent sequence items become one token.

[B, T*K, d] -> [B, T, out_dim]: the K item vectors of a group are concatenated (width K*d) and linearly projected
to the model width. Optional InnerTrans: one small transformer block (width d) over the K items inside each group
before the concatenation, so the merged token mixes its items by content and not only by slot.

[ours] decisions:
- Inside a group the InnerTrans attention is bidirectional (a merged token stands for the whole group anyway;
  causality between groups is enforced by the model's mask), and padded items are invisible as keys.
  A padded item query sees only itself (so a fully padded group stays finite); padded items are zeroed
  after the block, so a partially filled group's merged token does not depend on what the padding held.
- A merged token is valid when at least one of its K items is.
"""
from __future__ import annotations

import torch
from torch import nn

from recsys.layers.block import TransformerBlock
from recsys.layers.norms import NormPlacement, NormType


class TokenMerge(nn.Module):
    def __init__(
        self,
        dim: int,
        k: int,
        out_dim: int,
        inner_trans: bool = True,
        inner_heads: int = 2,
        ffn_mult: int = 2,
        norm: NormPlacement = "pre",
        norm_type: NormType = "layernorm",
    ):
        super().__init__()
        if k < 1:
            raise ValueError(f"merge_k: group size must be >= 1, got {k}")
        self.k, self.dim = k, dim
        self.inner = TransformerBlock(dim, inner_heads, ffn_mult, norm, norm_type) if inner_trans else None
        self.proj = nn.Linear(k * dim, out_dim)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, L, d] with L a multiple of K, valid [B, L] bool -> (merged [B, L/K, out_dim], merged_valid [B, L/K])."""
        B, L, d = x.shape
        if L % self.k:
            raise ValueError(f"token merge: sequence length {L} is not a multiple of merge_k={self.k}")
        T = L // self.k
        g = x.reshape(B * T, self.k, d)
        gv = valid.reshape(B * T, self.k)
        if self.inner is not None:
            eye = torch.eye(self.k, dtype=torch.bool, device=x.device)
            mask = gv.unsqueeze(1) | eye  # [B*T, K(query), K(key)]
            g = self.inner(g, mask=mask)
            g = g * gv.unsqueeze(-1).to(g.dtype)
        merged = self.proj(g.reshape(B, T, self.k * d))
        return merged, gv.any(-1).reshape(B, T)


__all__ = ["TokenMerge"]
