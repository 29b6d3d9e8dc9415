"""Category-match attention bias: a learnable score per query group for history events in the candidate's category,
added where a candidate-aware query reads the sequence.

Why: SIM's "hard search" (Pi et al., CIKM'20) selects the history events that share the candidate's category,
because category identity is the strongest and cheapest relevance signal in a long history. Learned query-key
geometry has to rediscover that identity from embeddings (DIN gets it for free from h - v = 0 on the shared
category row); an explicit indicator gives the attention the exact match with one weight per group. bench_quality
measures what it adds.

[ours] decisions:
- The indicator is exact id equality on the category vocabulary (ids taken modulo its size, as the lookups do).
- For merged tokens (LONGER) it is the fraction of the token's real items in the candidate's category.
- One weight per group (head / generated query), zero-initialised: a model starts exactly as without it.
- It depends on the candidate, so it is added only to candidate-aware queries (target attention, LONGER's global
  tokens); sequence tokens never see it, so every cached sequence state stays candidate-independent.
"""
from __future__ import annotations

import torch
from torch import nn


class CategoryMatchBias(nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        if groups < 1:
            raise ValueError(f"category match bias: groups must be >= 1, got {groups}")
        self.weight = nn.Parameter(torch.zeros(groups))

    @staticmethod
    def match(seq_category: torch.Tensor, valid: torch.Tensor, cand_category: torch.Tensor) -> torch.Tensor:
        """seq_category / valid [B, T, K] (K items per token; K = 1 for plain sequences), cand_category [B, C]
        -> [B, C, T]: the fraction of each token's real items in the candidate's category (0 for empty tokens)."""
        hit = (seq_category.unsqueeze(1) == cand_category[:, :, None, None]) & valid.unsqueeze(1)  # [B, C, T, K]
        n = valid.sum(-1).clamp(min=1).unsqueeze(1)  # [B, 1, T]
        return hit.sum(-1).to(torch.float32) / n

    def forward(self, match: torch.Tensor) -> torch.Tensor:
        """match [B, C, T] -> bias [B, C, groups, T]."""
        return match.unsqueeze(2) * self.weight[:, None]


__all__ = ["CategoryMatchBias"]
