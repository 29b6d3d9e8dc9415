"""Recency bias: log2 buckets, the bias reaches the attention scores, and in every model that has it a bias that
only lets the newest events through makes the score blind to older history (so it is applied on the real path)."""
from __future__ import annotations

import math

import pyarrow as pa
import pytest
import torch

from recsys.data.batch import build_batch
from recsys.layers.recency_bias import RecencyBias
from recsys.layers.side_info import positions_from_newest
from recsys.layers.target_attention import masked_target_attention
from tests.models.ranking_rows import SPEC, random_rows
from tests.models.test_ranker_contract import build


def test_buckets_are_log2_of_distance_plus_one_and_clamped():
    rb = RecencyBias(groups=2, buckets=11)
    d = torch.tensor([0, 1, 2, 3, 4, 7, 8, 15, 16, 1023, 1024, 5000, -3])
    assert rb.bucket(d).tolist() == [0, 1, 1, 2, 2, 3, 3, 4, 4, 10, 10, 10, 0]
    with torch.no_grad():
        rb.table.copy_(torch.arange(22.0).view(2, 11))
    assert rb(torch.tensor([[0, 3]])).tolist() == [[[0.0, 2.0]], [[11.0, 13.0]]]  # [groups, ...]


def test_target_attention_bias_is_added_to_the_scores():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, 4), torch.randn(2, 5, 4), torch.randn(2, 5, 6)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    bias = torch.randn(2, 3, 5)
    scores = q @ k.transpose(-1, -2) / math.sqrt(4) + bias
    w = torch.softmax(scores.masked_fill(~mask[:, None], -torch.inf), -1)
    torch.testing.assert_close(masked_target_attention(q, k, v, mask, bias), w @ v.masked_fill(~mask[..., None], 0))


def test_bucket_zero_bias_reads_the_newest_event_of_each_left_aligned_row():
    lengths = torch.tensor([5, 3, 1])
    L = 5
    mask = torch.arange(L)[None] < lengths[:, None]
    v = torch.randn(3, L, 4)
    rb = RecencyBias(1, 8)
    with torch.no_grad():
        rb.table.fill_(-1e4)
        rb.table[0, 0] = 0.0
    bias = rb(positions_from_newest(lengths, L))[0].unsqueeze(1)  # [B, 1, L]
    out = masked_target_attention(torch.zeros(3, 1, 4), torch.randn(3, L, 4), v, mask, bias)[:, 0]
    torch.testing.assert_close(out, v[torch.arange(3), lengths - 1])


def _with_older_history_changed(rows: pa.Table, keep_newest: int) -> pa.Table:
    """Every history item id except the newest `keep_newest` replaced by another id."""
    items = rows.column("seq_item_id").to_pylist()
    new = [[(x + 123) % 500 if j < len(h) - keep_newest else x for j, x in enumerate(h)] for h in items]
    return rows.set_column(rows.schema.get_field_index("seq_item_id"), "seq_item_id", pa.array(new, pa.list_(pa.int64())))


@pytest.mark.parametrize("name", ["ads", "lmn", "longer"])
def test_a_newest_only_bias_makes_older_history_invisible(name):
    """Bias 0 for distance 0 and -1e4 elsewhere: scores depend only on the newest event (LONGER: the newest merged
    token, merge_k=4 items). Negative control: with zero biases the same change moves the scores."""
    model = build(name, **({"profile": "none"} if name == "lmn" else {}))  # the profile pools every item
    keep = 4 if name == "longer" else 1
    rows = random_rows(32, seed=3, min_len=10)  # 32 rows: the negative control's effect stays >10x the tolerance
    changed = _with_older_history_changed(rows, keep)
    model.eval()

    def logits() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return model(build_batch(rows, SPEC)), model(build_batch(changed, SPEC))

    tables = [m for m in model.modules() if isinstance(m, RecencyBias)]
    assert tables, f"{name} has no recency bias"
    with torch.no_grad():
        for t in tables:
            t.table.zero_()
    a, b = logits()
    assert (a - b).abs().max() > 1e-4  # the older history matters without the bias
    with torch.no_grad():
        for t in tables:
            t.table.fill_(-1e4)
            t.table[:, 0] = 0.0
    a, b = logits()
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_attention_mass_is_log1p_of_summed_exp_scores_over_real_keys():
    torch.manual_seed(1)
    q, k, v = torch.randn(3, 2, 4), torch.randn(3, 5, 4), torch.randn(3, 5, 6)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False], [False] * 5])
    bias = torch.randn(3, 2, 5)
    out, mass = masked_target_attention(q, k, v, mask, bias, return_mass=True)
    torch.testing.assert_close(out, masked_target_attention(q, k, v, mask, bias))
    scores = q @ k.transpose(-1, -2) / 2 + bias
    want = torch.log1p((scores.exp() * mask[:, None]).sum(-1))
    torch.testing.assert_close(mass, want)
    assert mass[2].abs().max() == 0  # empty history: no mass
