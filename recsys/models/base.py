"""The one ranking interface every model implements.

- `forward(batch)` -> logits [B] for each row's (user, candidate). With `return_aux=True` it returns
  `(logits, aux_loss)` so models with auxiliary objectives (LMN's memory loss) train through the same call
  (the trainer always calls the model itself, so DDP/DMP hooks see every forward).
- `encode_user(batch)` -> a model-specific state computed once per user (ignores the batch's candidate).
- `score(state, candidates)` -> logits [B, C] for C candidates per user.
Contract (tested for every model): score(encode_user(b), b.candidates())[:, 0] == forward(b) to 1e-5 in fp32.
"""
from __future__ import annotations

import abc
from typing import Any

import torch
from torch import nn

from recsys.data.batch import Candidates, RankingBatch


class Ranker(nn.Module, abc.ABC):
    @abc.abstractmethod
    def encode_user(self, batch: RankingBatch) -> Any: ...

    @abc.abstractmethod
    def score(self, state: Any, candidates: Candidates) -> torch.Tensor: ...

    def aux_loss(self, state: Any, batch: RankingBatch) -> torch.Tensor:
        """Auxiliary training loss (0 unless the model has one)."""
        return torch.zeros((), device=batch.labels.device)

    def forward(self, batch: RankingBatch, return_aux: bool = False):
        state = self.encode_user(batch)
        logits = self.score(state, batch.candidates())[:, 0]
        if return_aux:
            return logits, self.aux_loss(state, batch)
        return logits
