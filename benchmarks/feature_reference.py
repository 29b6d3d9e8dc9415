"""A reference row for bench_quality: logistic regression on three engineered features, fit on the same training
split the rankers train on and scored on the same validation rows.

Why: the simulator plants a short-term interest (an exponential moving average of the factors of recently engaged
items, see recsys/data/simulator.py) and item popularity. Two numbers that a recsys engineer would compute by hand
capture much of that: the recency-weighted share of history events in the candidate's category and the item's
click count. A neural ranker that scores below this logistic regression has not learned the planted structure; the
row says how much of the headroom to the oracle a simple model takes. It uses knowledge of the simulator, so it is a
yardstick for the models, not a competitor.

Features (per impression, from the same point-in-time training table, newest `max_len` events):
  share  = sum_j decay^j [category_j == candidate category] / sum_j decay^j  (j = 0 for the newest event)
  clicks = log(1 + the candidate item's clicks among the training-split impressions)
  domain one-hot (the request's domain)
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.dataset as ds

from recsys.training.config import DataConfig
from recsys.training.data import time_split

COLUMNS = ["request_id", "ts", "item_id", "item_category", "domain", "label", "seq_category"]


def recency_share(table, max_len: int, decay: float) -> np.ndarray:
    """Recency-weighted share of each row's newest `max_len` history events in the candidate's category."""
    col = table.column("seq_category").combine_chunks()
    offsets = col.offsets.to_numpy()
    cats = col.values.to_numpy(zero_copy_only=False)
    lengths = np.diff(offsets)
    row = np.repeat(np.arange(len(lengths)), lengths)
    age = offsets[1:][row] - 1 - np.arange(len(cats))  # 0 = newest
    w = np.where(age < max_len, decay ** np.minimum(age, max_len).astype(np.float64), 0.0)
    match = cats == table.column("item_category").to_numpy()[row]
    n = len(lengths)
    return np.bincount(row, w * match, n) / np.maximum(np.bincount(row, w, n), 1e-12)


def feature_lr_logits(features_dir, validation_fraction: float, max_len: int, decay: float = 0.85,
                      seed: int = 0) -> pd.DataFrame:
    """(request_id, item_id) -> logit for the validation rows of the training table under `features_dir` (one row per
    pair: a slate may show an item twice, with the same features and so the same logit)."""
    from sklearn.linear_model import LogisticRegression

    table = ds.dataset(f"{features_dir}/training", format="parquet").to_table(columns=COLUMNS)
    split = time_split(table, DataConfig(validation_fraction=validation_fraction))
    train, val = split.train, split.validation
    clicks = np.bincount(train.column("item_id").to_numpy(), train.column("label").to_numpy().astype(np.float64),
                         minlength=int(pc.max(table.column("item_id")).as_py()) + 1)
    n_domains = int(pc.max(table.column("domain")).as_py()) + 1

    def design(t) -> np.ndarray:
        dom = t.column("domain").to_numpy()
        return np.column_stack([recency_share(t, max_len, decay), np.log1p(clicks[t.column("item_id").to_numpy()])]
                               + [(dom == k).astype(np.float64) for k in range(n_domains)])

    model = LogisticRegression(max_iter=2000, random_state=seed).fit(design(train), train.column("label").to_numpy())
    return pd.DataFrame({"request_id": val.column("request_id").to_numpy(), "item_id": val.column("item_id").to_numpy(),
                         "logit": model.decision_function(design(val))}).drop_duplicates(["request_id", "item_id"])
