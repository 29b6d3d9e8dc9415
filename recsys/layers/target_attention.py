"""Masked target attention: a few query vectors (one per candidate, or several per candidate) read a padded
sequence. Used by LMN (candidate over per-item memory read-outs) and ADS (generated queries over the personalized
sequence).

Why a small file of its own: both models need the same masking rule, and it must be exact — a padded position gets
weight exactly 0 and its value is zeroed before the weighted sum, so padding content can never leak into the output
(bit-identical), and a user with an empty history gets a zero vector instead of NaN.
"""
from __future__ import annotations

import math

import torch


def masked_target_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    bias: torch.Tensor | None = None,
    return_mass: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention of Q queries over L keys per row.

    q: [..., Q, d]; k: [..., L, d]; v: [..., L, dv]; mask: bool, broadcastable to [..., L] (True = real position);
    bias: optional additive scores broadcastable to [..., Q, L] (e.g. recsys.layers.recency_bias).
    Returns [..., Q, dv]; rows whose mask is all False return zeros. With `return_mass`, also the attention mass
    [..., Q] = log(1 + sum over real keys of exp(score)): how strongly the query matches the sequence at all,
    which the softmax-normalised output cannot say (DIN's "intensity of interest"); 0 for an empty sequence.
    """
    m = mask.unsqueeze(-2)  # [..., 1, L]
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if bias is not None:
        scores = scores + bias.to(scores.dtype)
    scores = scores.masked_fill(~m, torch.finfo(scores.dtype).min)
    w = torch.softmax(scores, dim=-1) * m.to(scores.dtype)
    v = v.masked_fill(~mask.unsqueeze(-1), 0.0)
    out = torch.matmul(w, v)
    if not return_mass:
        return out
    null = torch.zeros(*scores.shape[:-1], 1, dtype=scores.dtype, device=scores.device)
    return out, torch.logsumexp(torch.cat([scores, null], -1), -1)


__all__ = ["masked_target_attention"]
