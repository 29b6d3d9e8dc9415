"""User x candidate cross features: the recency-weighted share of the user's history in the candidate's category,
at a few decay rates.

Why: every production ranker feeds its head counting features that cross the user's behaviour with the candidate
("clicks on this category in the last N events"); LONGER's global tokens include such "compressed user-item
features" [paper]. A learned model has to rediscover category identity and recency from embeddings, which a ranker
trained for one epoch does not do well (bench_quality: a logistic regression on this share and item clicks beats
every model reading the raw sequence). With the same features in every model, the comparison is about what each
architecture adds on top.

Definition, per (user, candidate) and decay rate a (positions counted from the newest event, 0 = newest):
    share_a = sum_j a^pos_j [category_j == candidate category] / sum_j a^pos_j      (0 for an empty history)
a = 1 is the plain share over the whole kept history; a = 0.5 looks at the newest few events.
[ours]: exact id equality on the category vocabulary; decays are a config list (`embedding.category_share`).
"""
from __future__ import annotations

import torch


def category_share(
    seq_category: torch.Tensor, valid: torch.Tensor, pos: torch.Tensor, cand_category: torch.Tensor, decays: torch.Tensor
) -> torch.Tensor:
    """seq_category / valid / pos [B, L] (pos = distance from the newest event), cand_category [B, C],
    decays [n] -> [B, C, n]."""
    w = decays.to(torch.float32).view(1, 1, -1) ** pos.to(torch.float32).unsqueeze(-1)  # [B, L, n]
    w = w * valid.unsqueeze(-1).to(w.dtype)
    match = ((seq_category.unsqueeze(1) == cand_category.unsqueeze(-1)) & valid.unsqueeze(1)).to(w.dtype)  # [B, C, L]
    return torch.matmul(match, w) / w.sum(1).unsqueeze(1).clamp(min=1e-30)


__all__ = ["category_share"]
