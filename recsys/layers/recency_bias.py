"""Learnable recency bias for attention over a behaviour sequence: an additive score per (query group, log2 bucket
of the distance from the newest event), in the spirit of HSTU's relative attention bias (Zhai et al., ICML'24,
"Actions Speak Louder than Words").

Why: with histories of thousands of events, what predicts the next click often sits in the newest few dozen
(interest drifts). Position embeddings added to the tokens can express "prefer recent" only through the learned
query-key geometry, which a ranker trained for one epoch does not find (bench_quality: DIN on the newest 16 events
beats every model reading 2000). A bias table reaches every distance bucket with a direct gradient.

[ours] decisions:
- Buckets: floor(log2(1 + distance)), the last bucket open-ended; distance 0 = the newest event. Fine where it
  matters (1, 2-3, 4-7, ...), 11 buckets cover 2000 events.
- One row per query group (a head, or a generated query), zero-initialised: a model starts exactly as without it.
- The bias depends on key positions only, never on the candidate, so KV caches stay valid (callers add it to the
  cached scores).
"""
from __future__ import annotations

import torch
from torch import nn


class RecencyBias(nn.Module):
    def __init__(self, groups: int, buckets: int = 16):
        super().__init__()
        if groups < 1 or buckets < 1:
            raise ValueError(f"recency bias: groups and buckets must be >= 1, got {groups}, {buckets}")
        self.buckets = buckets
        self.table = nn.Parameter(torch.zeros(groups, buckets))

    def bucket(self, distance: torch.Tensor) -> torch.Tensor:
        """Distances (>= 0, any shape, integer) -> bucket ids."""
        d = distance.clamp(min=0).to(torch.float32)
        return torch.floor(torch.log2(1 + d)).long().clamp(max=self.buckets - 1)

    def forward(self, distance: torch.Tensor) -> torch.Tensor:
        """distance [...] -> bias [groups, ...] (added to attention scores of each group)."""
        return self.table[:, self.bucket(distance)]


__all__ = ["RecencyBias"]
