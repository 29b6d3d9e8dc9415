"""Category-share cross features: equal to a per-row loop, the same from any layout given its positions, and the
embedder's batch path equals its cached-state path."""
from __future__ import annotations

import numpy as np
import torch

from recsys.data.batch import Candidates, build_batch
from recsys.layers.cross_features import category_share
from recsys.layers.embedding import EmbeddingSettings, SparseEmbedder
from tests.models.ranking_rows import SPEC, random_rows


def test_category_share_matches_a_loop():
    rng = np.random.default_rng(0)
    B, L, C = 6, 9, 4
    lengths = rng.integers(0, L + 1, B)
    cats = torch.from_numpy(rng.integers(0, 3, (B, L)))
    valid = torch.arange(L)[None] < torch.from_numpy(lengths)[:, None]
    pos = (torch.from_numpy(lengths)[:, None] - 1 - torch.arange(L)[None]).clamp(min=0)
    cand = torch.from_numpy(rng.integers(0, 3, (B, C)))
    decays = torch.tensor([0.5, 0.9, 1.0])
    out = category_share(cats, valid, pos, cand, decays)
    for b in range(B):
        hist = cats[b, : lengths[b]].tolist()[::-1]  # newest first
        for c in range(C):
            for k, a in enumerate(decays.tolist()):
                w = np.array([a**j for j in range(len(hist))])
                want = (w * (np.array(hist) == int(cand[b, c]))).sum() / w.sum() if hist else 0.0
                assert abs(float(out[b, c, k]) - want) < 1e-6, (b, c, a)


def test_embedder_batch_and_state_paths_agree():
    emb = SparseEmbedder(SPEC, EmbeddingSettings(dim=4, category_share=[0.5, 1.0]))
    rows = random_rows(8, seed=2)
    e = emb(build_batch(rows, SPEC))
    assert e.cross.shape == (8, 2) and emb.n_cross == 2
    cands = Candidates(torch.zeros(8, 1, dtype=torch.long), e.cand_category_ids.unsqueeze(1))
    again = emb.cross_features(e.seq_category_ids, e.mask, emb.candidate_category_ids(cands))
    torch.testing.assert_close(again[:, 0], e.cross)
    assert (e.cross > 0).any() and SparseEmbedder(SPEC, EmbeddingSettings(dim=4))(build_batch(rows, SPEC)).cross is None
