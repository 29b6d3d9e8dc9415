"""Token merge: shapes, concatenation semantics, InnerTrans stays inside its group, padding is inert."""
from __future__ import annotations

import pytest
import torch

from recsys.layers.token_merge import TokenMerge


def test_shapes_and_plain_concatenation():
    torch.manual_seed(0)
    tm = TokenMerge(dim=4, k=3, out_dim=10, inner_trans=False)
    x = torch.randn(2, 12, 4)
    valid = torch.ones(2, 12, dtype=torch.bool)
    valid[1, :5] = False  # front padding: group 0 empty, group 1 partial
    merged, mvalid = tm(x * valid.unsqueeze(-1), valid)
    assert merged.shape == (2, 4, 10) and mvalid.shape == (2, 4)
    assert mvalid.tolist() == [[True] * 4, [False, True, True, True]]
    # merged token t = proj(concat(x[3t], x[3t+1], x[3t+2]))
    assert torch.allclose(merged[0, 2], tm.proj(x[0, 6:9].reshape(-1)), atol=1e-6)
    with pytest.raises(ValueError, match="multiple of merge_k"):
        tm(torch.randn(1, 7, 4), torch.ones(1, 7, dtype=torch.bool))


def test_inner_trans_mixes_only_inside_a_group_and_ignores_padding():
    torch.manual_seed(1)
    tm = TokenMerge(dim=8, k=4, out_dim=16, inner_trans=True, inner_heads=2)
    x = torch.randn(1, 12, 8)
    valid = torch.ones(1, 12, dtype=torch.bool)
    valid[0, :2] = False  # group 0 half padded
    base, _ = tm(x, valid)
    # changing an item of group 2 changes only merged token 2
    x2 = x.clone()
    x2[0, 9] += 1.0
    other, _ = tm(x2, valid)
    assert torch.equal(base[0, :2], other[0, :2]) and not torch.allclose(base[0, 2], other[0, 2])
    # padded items are invisible and zeroed: their content does not matter
    x3 = x.clone()
    x3[0, :2] = 100 * torch.randn(2, 8)
    padded, _ = tm(x3, valid)
    assert torch.equal(base, padded)
    # InnerTrans changes the result compared with plain concatenation (it is really applied)
    plain = tm.proj((x * valid.unsqueeze(-1)).reshape(1, 3, 32))
    assert not torch.allclose(plain, base)
    # a fully padded group stays finite
    empty = torch.zeros(1, 12, dtype=torch.bool)
    out, mv = tm(x, empty)
    assert torch.isfinite(out).all() and not mv.any()
