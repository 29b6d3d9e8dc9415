"""Sequence side information (LONGER, arXiv 2505.04421 §sequence inputs): each history item's embedding gets its
time gap to the request time concatenated, a learnable absolute position embedding added, then an MLP to width d.

[ours] decisions:
- Time gap encoding: two parts concatenated to the item features: log1p(gap_seconds) / 10 (a smooth scalar, ~[0, 2]
  for gaps up to years) and a learned embedding of the log2 bucket floor(log2(1 + gap)) (coarse, non-linear).
- The position embedding is added to the concatenated vector (width = item features + time features), as the
  paper adds it before the MLP. Position indices are chosen by the caller (models use the distance from the newest
  event, see their docstrings); indices beyond the table are clamped to its last row.
- Padded positions output exact zeros.
- `positions_from_newest` gives the "distance from the newest event" indices for the embedder's left-aligned layout
  (ADS, LMN); LONGER computes the same indices in its own right-aligned layout.
"""
from __future__ import annotations

import torch
from torch import nn

from recsys.layers.mlp import MLP


class SequenceSideInfo(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, max_positions: int, time_buckets: int = 32, time_dim: int = 8):
        super().__init__()
        self.time_buckets = time_buckets
        self.time_emb = nn.Embedding(time_buckets, time_dim)
        width = in_dim + 1 + time_dim
        self.pos_emb = nn.Embedding(max_positions, width)
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        self.mlp = MLP(width, [out_dim], out_dim)

    def time_features(self, gap: torch.Tensor) -> torch.Tensor:
        """gap [..., L] seconds -> [..., L, 1 + time_dim]."""
        g = gap.float().clamp(min=0)
        bucket = torch.floor(torch.log2(1 + g)).long().clamp(max=self.time_buckets - 1)
        return torch.cat([(torch.log1p(g) / 10).unsqueeze(-1), self.time_emb(bucket)], -1)

    def forward(self, feats: torch.Tensor, gap: torch.Tensor, pos: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """feats [B, L, in_dim], gap [B, L], pos [B, L] long, valid [B, L] bool -> [B, L, out_dim] (0 where padded)."""
        pos = pos.clamp(0, self.pos_emb.num_embeddings - 1)
        x = torch.cat([feats, self.time_features(gap).to(feats.dtype)], -1) + self.pos_emb(pos)
        return self.mlp(x) * valid.unsqueeze(-1).to(feats.dtype)


def positions_from_newest(lengths: torch.Tensor, L: int) -> torch.Tensor:
    """Position indices [B, L] long for a left-aligned history (oldest first, newest at length-1, as EmbeddedBatch):
    0 = newest event, length-1 = oldest; padded positions get 0 (their side-info output is zeroed anyway)."""
    j = torch.arange(L, device=lengths.device).unsqueeze(0)
    return (lengths.to(torch.long).unsqueeze(1) - 1 - j).clamp(min=0)


__all__ = ["SequenceSideInfo", "positions_from_newest"]
