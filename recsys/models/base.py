"""The one ranking interface every model implements.

- `forward(batch)` -> logits [B] for each row's (user, candidate). With `return_aux=True` it returns
  `(logits, aux_loss)` so models with auxiliary objectives (LMN's memory loss) train through the same call
  (the trainer always calls the model itself, so DDP/DMP hooks see every forward).
- `encode_user(batch)` -> a model-specific state computed once per user (ignores the batch's candidate).
- `score(state, candidates)` -> logits [B, C] for C candidates per user.
Contract (tested for every model): score(encode_user(b), b.candidates())[:, 0] == forward(b) to 1e-5 in fp32.
`DenseOptionsMixin` gives models with `bf16`/`activation_checkpointing` config fields one implementation of both.
"""
from __future__ import annotations

import abc
import contextlib
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from recsys.data.batch import Candidates, RankingBatch
from recsys.layers.embedding import SparseEmbedder


class Ranker(nn.Module, abc.ABC):
    embedder: SparseEmbedder  # every ranker's sparse ids go through one (what the trainer shards)

    @abc.abstractmethod
    def encode_user(self, batch: RankingBatch) -> Any: ...

    @abc.abstractmethod
    def score(self, state: Any, candidates: Candidates) -> torch.Tensor: ...

    def aux_loss(self, state: Any, batch: RankingBatch) -> torch.Tensor:
        """Auxiliary training loss (0 unless the model has one)."""
        return torch.zeros((), device=batch.labels.device)

    @abc.abstractmethod
    def forward(self, batch: RankingBatch, return_aux: bool = False):
        """The full forward over each row's (user, candidate), computed on its own path (not via
        encode_user/score) so the two-stage contract test compares two computations."""


class DenseOptionsMixin:
    """bf16 autocast and activation checkpointing for models whose config has `bf16` and
    `activation_checkpointing` fields (the trainer calls `set_activation_checkpointing`)."""

    def set_activation_checkpointing(self, enabled: bool = True) -> None:
        self.cfg.activation_checkpointing = enabled

    def _autocast(self, device: torch.device):
        if not self.cfg.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)

    def _run(self, fn, *args):
        """fn(*args), recomputed in the backward pass when activation checkpointing is on."""
        if self.cfg.activation_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)
