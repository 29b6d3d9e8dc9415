"""A plain MLP tower (Linear + activation), the head shared by all rankers."""
from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Sequential):
    def __init__(self, in_dim: int, hidden: list[int], out_dim: int | None = 1, dropout: float = 0.0):
        layers: list[nn.Module] = []
        d = in_dim
        for h in hidden:
            layers += [nn.Linear(d, h), nn.SiLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            d = h
        if out_dim is not None:
            layers.append(nn.Linear(d, out_dim))
        super().__init__(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102 - nn.Sequential on the last dim
        return super().forward(x)
