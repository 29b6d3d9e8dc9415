"""ADS building blocks (Adaptive Domain Scaling, arXiv 2502.05523): layers whose weights are generated from
domain features, per example.

`GeneratedLinear` is the common unit: for conditioning features z (one vector per example),
  P(z)  = Linear2(SiLU(Linear1(z)))                  two-layer "private" generator
  W(z)  = W_shared + P_W(z)        (combine="sum")
          W_shared * P_W(z)        (combine="product", elementwise)
  b(z)  = the same rule with b_shared and P_b(z)
  y     = x W(z) + b(z)
with `copies` independent (W, b) pairs generated at once (PCRG's several queries).
[ours] initialisation: the generator's last layer starts small (std 0.01 / sqrt(hidden)) with bias 0 for "sum" and
bias 1 for "product", so at start W(z) is W_shared plus a small domain-dependent perturbation in both modes;
b_shared starts at 0 ("sum") or N(0, 0.02) ("product", where 0 would switch the private bias off).

`PSRG` applies a `depth`-layer generated MLP to every sequence item (SiLU between layers; optional residual).
`PCRG` turns the candidate's features into `n_queries` queries with generated weights. Both generate their weights
from z alone (never from the candidate), so the weights are computed once per user/request and cached.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Combine = Literal["sum", "product"]


class GeneratedLinear(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, cond_dim: int, hidden: int, combine: Combine, copies: int = 1):
        super().__init__()
        self.in_dim, self.out_dim, self.copies, self.combine = in_dim, out_dim, copies, combine
        self.w_shared = nn.Parameter(torch.randn(copies, in_dim, out_dim) / in_dim**0.5)
        # product mode: a zero shared bias would make b(z) = 0 for every domain (and give P_b no gradient)
        b0 = torch.randn(copies, out_dim) * 0.02 if combine == "product" else torch.zeros(copies, out_dim)
        self.b_shared = nn.Parameter(b0)
        self.private = nn.Sequential(
            nn.Linear(cond_dim, hidden), nn.SiLU(), nn.Linear(hidden, copies * (in_dim * out_dim + out_dim))
        )
        last = self.private[-1]
        nn.init.normal_(last.weight, std=0.01 / hidden**0.5)
        nn.init.constant_(last.bias, 1.0 if combine == "product" else 0.0)

    def private_parts(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z [B, cond] -> P_W [B, copies, in, out], P_b [B, copies, out]."""
        p = self.private(z).view(z.shape[0], self.copies, self.in_dim * self.out_dim + self.out_dim)
        pw, pb = p.split([self.in_dim * self.out_dim, self.out_dim], dim=-1)
        return pw.reshape(-1, self.copies, self.in_dim, self.out_dim), pb

    def generate(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z [B, cond] -> W [B, copies, in, out], b [B, copies, out]."""
        pw, pb = self.private_parts(z)
        if self.combine == "sum":
            return self.w_shared + pw, self.b_shared + pb
        return self.w_shared * pw, self.b_shared * pb


class PSRG(nn.Module):
    """Personalized sequence representation: x [B, L, dim] -> [B, L, dim] through a generated MLP."""

    def __init__(self, dim: int, cond_dim: int, hidden: int, depth: int, combine: Combine, residual: bool = True):
        super().__init__()
        self.layers = nn.ModuleList(GeneratedLinear(dim, dim, cond_dim, hidden, combine) for _ in range(depth))
        self.act = nn.SiLU()
        self.residual = residual

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        h = x
        for i, layer in enumerate(self.layers):
            w, b = layer.generate(z)
            h = torch.baddbmm(b[:, 0].unsqueeze(1), h, w[:, 0])  # [B, L, dim]
            if i < len(self.layers) - 1:
                h = self.act(h)
        return x + h if self.residual else h


class PCRG(nn.Module):
    """Personalized candidate representation: candidate features [B, C, in] -> queries [B, C, n_queries, dim]."""

    def __init__(self, in_dim: int, dim: int, cond_dim: int, hidden: int, n_queries: int, combine: Combine):
        super().__init__()
        self.gen = GeneratedLinear(in_dim, dim, cond_dim, hidden, combine, copies=n_queries)

    def generate(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.gen.generate(z)

    @staticmethod
    def project(cand: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """cand [B, C, in], w [B, Q, in, dim], b [B, Q, dim] -> [B, C, Q, dim]."""
        return torch.einsum("bci,bqio->bcqo", cand, w) + b.unsqueeze(1)


__all__ = ["GeneratedLinear", "PSRG", "PCRG", "Combine"]
