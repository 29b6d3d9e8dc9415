"""Normalisation layers and their placement names, shared by every transformer block.

Placements (`NormPlacement`) used by `recsys.layers.block.TransformerBlock`:
- "pre"    : x' = x + Attn(N(x));            out = x' + FFN(N(x'))          (default: stable for deep stacks)
- "post"   : x' = N(x + Attn(x));            out = N(x' + FFN(x'))          (original Transformer)
- "hybrid" : x' = x + Attn(N(xWq), N(xWk), N(xWv));  out = N(x' + FFN(x'))  (HybridNorm, arXiv 2503.04598:
             QKV-norm inside attention + Post-Norm FFN)
"""
from __future__ import annotations

from typing import Literal

from torch import nn

NormType = Literal["layernorm", "rmsnorm"]
NormPlacement = Literal["pre", "post", "hybrid"]


def make_norm(kind: NormType, dim: int) -> nn.Module:
    """A normalisation over the last dimension of width `dim`."""
    if kind == "layernorm":
        return nn.LayerNorm(dim)
    if kind == "rmsnorm":
        return nn.RMSNorm(dim)
    raise ValueError(f"norm_type: unknown normalisation {kind!r}; choose 'layernorm' or 'rmsnorm'")


__all__ = ["NormType", "NormPlacement", "make_norm"]
