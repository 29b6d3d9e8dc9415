"""Category-match bias: the per-token match fraction, and in ADS/LMN a dominant match weight makes the attention
read only the history items in the candidate's category (so the bias sits on the real scoring path)."""
from __future__ import annotations

import pyarrow as pa
import pytest
import torch

from recsys.data.batch import build_batch
from recsys.layers.match_bias import CategoryMatchBias
from tests.models.ranking_rows import SPEC, random_rows
from tests.models.test_ranker_contract import build


def test_match_is_the_fraction_of_real_items_in_the_candidate_category():
    cats = torch.tensor([[[1, 2, 1, 3], [5, 5, 5, 5]]])  # [B=1, T=2, K=4]
    valid = torch.tensor([[[True, True, True, False], [False, False, False, False]]])
    cand = torch.tensor([[1, 3, 5]])  # C = 3
    m = CategoryMatchBias.match(cats, valid, cand)
    assert m.shape == (1, 3, 2)
    torch.testing.assert_close(m[0], torch.tensor([[2 / 3, 0.0], [0.0, 0.0], [0.0, 0.0]]))  # padding never matches
    bias = CategoryMatchBias(2)
    with torch.no_grad():
        bias.weight.copy_(torch.tensor([1.0, -2.0]))
    assert bias(m).shape == (1, 3, 2, 2) and bias(m)[0, 0, 1, 0].item() == pytest.approx(-4 / 3)


def _rows_with_candidate_in_history(n: int) -> pa.Table:
    rows = random_rows(n, seed=4, min_len=8)
    hist = rows.column("seq_category").to_pylist()
    cand = [h[len(h) // 2] for h in hist]  # a category every row's history holds
    return rows.set_column(rows.schema.get_field_index("item_category"), "item_category", pa.array(cand, pa.int64()))


@pytest.mark.parametrize("name", ["ads", "lmn"])
def test_dominant_match_weight_hides_items_of_other_categories(name):
    model = build(name, **({"profile": "none"} if name == "lmn" else {})).eval()  # the profile pools every item
    rows = _rows_with_candidate_in_history(10)
    cand = rows.column("item_category").to_pylist()
    items = rows.column("seq_item_id").to_pylist()
    cats = rows.column("seq_category").to_pylist()
    other = [[(x + 77) % 500 if c != cc else x for x, c in zip(h, hc)] for h, hc, cc in zip(items, cats, cand)]
    changed = rows.set_column(rows.schema.get_field_index("seq_item_id"), "seq_item_id", pa.array(other, pa.list_(pa.int64())))
    with torch.no_grad():
        model.match.weight.fill_(1e4)
        a, b = model(build_batch(rows, SPEC)), model(build_batch(changed, SPEC))
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
        model.match.weight.zero_()  # negative control: without it the other items matter
        a, b = model(build_batch(rows, SPEC)), model(build_batch(changed, SPEC))
    assert (a - b).abs().max() > 1e-4
