"""DLRM's feature interaction (Naumov et al. 2019): the pairwise dot products of a set of embedding vectors, handed
to an MLP head beside the vectors themselves.

Why a layer of its own: an MLP over concatenated embeddings approximates a dot product poorly (Rendle et al.,
RecSys'20), so every head that should compare a user-side vector with the candidate gets the same explicit dots.
The arithmetic is TorchRec's (torchrec.models.dlrm.InteractionArch); this wrapper only accepts any leading shape
([B] for a forward pass, [B, C] when scoring C candidates) and leaves DLRM's dense vector out of the output.
"""
from __future__ import annotations

import torch
from torch import nn
from torchrec.models.dlrm import InteractionArch


def check_dot_widths(interaction: str, field: str, width: int, dim: int) -> None:
    """Config check for heads that dot a model's own vectors (`field`, of `width`) with embeddings of width `dim`."""
    if interaction == "dot" and width != dim:
        raise ValueError(f"interaction: dot needs {field} ({width}) == embedding.dim ({dim}): "
                         "the attention outputs are dotted with the embeddings")


class DotInteraction(nn.Module):
    """n vectors of width d -> their n(n-1)/2 pairwise dot products (no parameters)."""

    def __init__(self, n_vectors: int):
        super().__init__()
        if n_vectors < 2:
            raise ValueError(f"a dot interaction needs at least 2 vectors, got {n_vectors}")
        self.n = n_vectors
        self.arch = InteractionArch(num_sparse_features=n_vectors - 1)

    @property
    def out_dim(self) -> int:
        return self.n * (self.n - 1) // 2

    def forward(self, vectors: list[torch.Tensor]) -> torch.Tensor:
        """vectors: n tensors [..., d] (same shape) -> [..., n(n-1)/2]."""
        if len(vectors) != self.n:
            raise ValueError(f"expected {self.n} vectors, got {len(vectors)}")
        lead, d = vectors[0].shape[:-1], vectors[0].shape[-1]
        stacked = torch.stack(vectors, -2).reshape(-1, self.n, d)
        return self.arch(stacked[:, 0], stacked[:, 1:])[:, d:].reshape(*lead, self.out_dim)


__all__ = ["DotInteraction", "check_dot_widths"]
