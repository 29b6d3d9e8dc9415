"""How much of the simulator's true item geometry a trained ranker's item embeddings hold.

Why: target attention (DIN, ADS, LONGER's candidate token) weighs history events by how related they are to the
candidate, and it can only know that as well as its embeddings place related items near each other. On simulator data
this is checkable against the truth (truth/item_factors.npy, items' categories, truth/item_popularity.npy) with
linear probes of the learned table, one row per item id (the model's item and category embeddings concatenated, as
its candidate path sees them):
  factor_r2           true item factor ~ table
  within_category_r2  the factor minus its category's mean factor ~ table + one-hot category: what the table knows
                      about an item beyond its category (a category embedding alone scores 0 here)
  popularity_r2       log true popularity ~ table
  chance              width / items: about what a random table of the same width scores on each probe
`HistorySignal.with_geometry(table)` (recsys/data/history_signal.py) then asks how much candidate-aware signal an
attention over this geometry finds, on the same rows as the true factors.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from recsys.data.batch import Candidates
from recsys.data.history_signal import category_means, fit_r2, item_categories
from recsys.models.base import Ranker


@dataclass(frozen=True)
class GeometryProbe:
    factor_r2: float
    within_category_r2: float
    popularity_r2: float
    chance: float


def probe_item_table(table: np.ndarray, root: str | Path) -> GeometryProbe:
    """Linear probes of `table` [items, width] (row = item id) against a simulator output's truth (module doc)."""
    root = Path(root)
    F = np.load(root / "truth" / "item_factors.npy").astype(np.float64)
    X = np.asarray(table, dtype=np.float64)
    if X.shape[0] != F.shape[0]:
        raise ValueError(f"table has {X.shape[0]} rows, the simulator has {F.shape[0]} items")
    cat = item_categories(root, F.shape[0])
    onehot = np.eye(int(cat.max()) + 1)[cat][:, 1:]  # one column dropped: the intercept spans it
    pop = np.log(np.load(root / "truth" / "item_popularity.npy").astype(np.float64))
    return GeometryProbe(fit_r2(X, F), fit_r2(np.column_stack([X, onehot]), F - category_means(F, cat)), fit_r2(X, pop),
                         X.shape[1] / F.shape[0])


@torch.no_grad()
def model_item_table(model: Ranker, categories: np.ndarray) -> np.ndarray:
    """[items, 2d]: every item id through the model's own candidate path (`embedder.embed_candidates`), the item and
    category embeddings concatenated."""
    ids = torch.arange(len(categories), dtype=torch.long).unsqueeze(0)
    c = model.embedder.embed_candidates(Candidates(ids, torch.as_tensor(categories, dtype=torch.long).unsqueeze(0)))
    return torch.cat([c["item_id"], c["item_category"]], -1)[0].double().numpy()


__all__ = ["GeometryProbe", "model_item_table", "probe_item_table"]
