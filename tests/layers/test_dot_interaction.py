"""DLRM's dot interaction: every pair's dot product once, in a fixed order, for any leading shape; and DIN's head hands
it the vectors it names (the pooling baseline's, the attended interest, the candidate)."""
from __future__ import annotations

import itertools

import pytest
import torch

from recsys.data.batch import build_batch
from recsys.layers.dot_interaction import DotInteraction
from recsys.models.din import DINConfig, DINRanker
from tests.models.ranking_rows import SPEC, random_rows


def test_equals_pairwise_dots_for_any_leading_shape():
    g = torch.Generator().manual_seed(0)
    vecs = [torch.randn(3, 5, 8, generator=g) for _ in range(4)]
    got = DotInteraction(4)(vecs)
    want = torch.stack([(a * b).sum(-1) for a, b in itertools.combinations(vecs, 2)], -1)
    assert got.shape == (3, 5, 6)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_rejects_too_few_or_a_wrong_number_of_vectors():
    with pytest.raises(ValueError, match="at least 2"):
        DotInteraction(1)
    with pytest.raises(ValueError, match="expected 3 vectors, got 2"):
        DotInteraction(3)([torch.zeros(2, 4), torch.zeros(2, 4)])


def test_din_dots_the_baselines_vectors_the_interest_and_the_candidate():
    cfg = {"embedding": {"dim": 8}, "attention_hidden": [16], "hidden": [16], "history_action": True,
           "attention_len": 6, "profile": "sum", "interaction": "dot"}
    torch.manual_seed(0)
    model = DINRanker(DINConfig.model_validate(cfg), SPEC).eval()
    seen: list[list[torch.Tensor]] = []
    model.dot.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    batch = build_batch(random_rows(6, seed=2, min_len=1, max_len=12), SPEC)
    with torch.no_grad():
        model(batch)
        e = model.embedder(batch)
        s = model._state(e)
    vecs = [v[:, 0] for v in seen[0]]  # C = 1
    assert len(vecs) == 8
    for got, want in zip(vecs[:3], [e.pooled_history(), e.user, e.domain]):
        assert torch.equal(got, want)
    assert torch.equal(vecs[-2], e.cand["item_id"]) and torch.equal(vecs[-1], e.cand["item_category"])
    interest = torch.cat(vecs[3:6], -1)  # item, category, action parts of the attended interest
    assert interest.abs().sum() > 0
    # the interest is a weighted mean of the attended history, so it lies in the span of those rows
    for b in range(interest.shape[0]):
        rows = s.hist[b][s.valid[b]]
        coef = torch.linalg.lstsq(rows.T, interest[b].unsqueeze(-1)).solution
        torch.testing.assert_close(rows.T @ coef, interest[b].unsqueeze(-1), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name,field", [("lmn", "att_dim"), ("ads", "seq_dim")])
def test_attention_models_refuse_dots_across_widths(name, field):
    from recsys.models.registry import MODELS

    cfg_cls, _ = MODELS[name]
    with pytest.raises(ValueError, match=f"interaction: dot needs {field} \\(16\\) == embedding.dim \\(8\\)"):
        cfg_cls.model_validate({"embedding": {"dim": 8}, field: 16, "interaction": "dot"})
    assert cfg_cls.model_validate({"embedding": {"dim": 8}, field: 16}).interaction == "none"
