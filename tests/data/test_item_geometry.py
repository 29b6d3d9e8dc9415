"""Probes of an item table against the simulator's truth, and the history-signal scores they feed (category shares,
another geometry): the truth probes as perfect, a category-only table as knowing nothing within categories, a model's
table is its own embedding rows."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys.data.batch import BatchSpec
from recsys.data.history_signal import category_centroids, history_signal, item_categories
from recsys.data.item_geometry import model_item_table, probe_item_table
from recsys.layers.embedding import EmbeddingSettings
from recsys.models.pooling import PoolingConfig, PoolingRanker


def test_probe_scores_the_truth_perfect_and_categories_blind_within_a_category(small_sim):
    root = small_sim[0]
    F = np.load(root / "truth" / "item_factors.npy").astype(np.float64)
    true = probe_item_table(F, root)
    assert true.factor_r2 == pytest.approx(1.0, abs=1e-9) and true.within_category_r2 == pytest.approx(1.0, abs=1e-9)
    cent = category_centroids(root)
    by_cat = probe_item_table(cent, root)
    closed_form = 1 - ((F - cent) ** 2).sum() / ((F - F.mean(0)) ** 2).sum()  # the category-mean fit
    assert by_cat.factor_r2 == pytest.approx(closed_form, abs=1e-9) and 0.3 < closed_form < 0.99
    assert by_cat.within_category_r2 == pytest.approx(0.0, abs=1e-9)
    noise = probe_item_table(np.random.default_rng(0).normal(size=(len(F), 32)), root)
    assert noise.chance == pytest.approx(32 / len(F))
    assert noise.within_category_r2 < 3 * noise.chance and noise.factor_r2 < 3 * noise.chance
    with pytest.raises(ValueError, match="rows"):
        probe_item_table(F[:-1], root)


def test_model_item_table_is_the_models_rows_and_probes_perfect_when_they_hold_the_factors(small_sim):
    root = small_sim[0]
    F = np.load(root / "truth" / "item_factors.npy")
    cats = item_categories(root, len(F))
    spec = BatchSpec(max_len=8, vocab_sizes={"item": len(F), "category": int(cats.max()) + 1, "action": 5, "domain": 2,
                                             "user": 300})
    model = PoolingRanker(PoolingConfig(embedding=EmbeddingSettings(dim=24)), spec)
    tables = model.embedder.ec.embeddings
    item_w, cat_w = tables["t_item"].weight, tables["t_category"].weight
    t = model_item_table(model, cats)
    np.testing.assert_array_equal(t, torch.cat([item_w, cat_w[torch.as_tensor(cats)]], 1).detach().double().numpy())
    assert probe_item_table(t, root).within_category_r2 < 0.2  # random init: near chance (24 * 2 / 800)
    with torch.no_grad():
        item_w.zero_()
        item_w[:, : F.shape[1]] = torch.as_tensor(F)
    assert probe_item_table(model_item_table(model, cats), root).within_category_r2 == pytest.approx(1.0, abs=1e-6)


def test_category_share_and_another_geometry_score_the_same_rows(small_sim):
    root = small_sim[0]
    h = history_signal(root, recent=16, attention_tau=2.0)
    shares = h.category_shares(16, decays=(0.8, 1.0))
    rows = np.flatnonzero(h.history > 0)[::97]
    for i in rows:
        events = h.hist_item[max(h.first[i], h.end[i] - 16) : h.end[i]][::-1]  # newest first
        same = h.item_category[events] == h.item_category[h.imp_item[i]]
        for decay, got in zip((0.8, 1.0), shares):
            w = decay ** np.arange(len(events))
            assert got[i] == pytest.approx((w * same).sum() / w.sum(), abs=1e-12)
    assert (shares[1][h.history == 0] == 0).all() and len(rows) > 5
    same = h.with_geometry(np.load(root / "truth" / "item_factors.npy"))
    np.testing.assert_array_equal(same.attention(16, 2.0), h.attention_score)
    np.testing.assert_array_equal(same.recent_score, h.recent_score)
    assert same.attention_score is None
    cent = h.with_geometry(category_centroids(root))
    assert not np.allclose(cent.recent_score, h.recent_score)
    np.testing.assert_array_equal(cent.logit, h.logit)
