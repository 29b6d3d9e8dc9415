"""Product-key memory: the k*k-grid search is the exact top-K over all n slots, and the read is the weighted bag."""
from __future__ import annotations

import pytest
import torch

from recsys.layers.product_key_memory import ProductKeyMemory, ProductKeyMemoryConfig


def _memory(**kw) -> ProductKeyMemory:
    torch.manual_seed(0)
    base = dict(n_keys=16, key_dim=8, value_dim=4, top_k=8, topk_per_axis=8, table_name="t_test_mem")
    base.update(kw)
    return ProductKeyMemory(ProductKeyMemoryConfig(**base))


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"heads": 3},
        {"top_k": 4, "topk_per_axis": 4},
        {"top_k": 3, "topk_per_axis": 7, "query_norm": True, "key_norm": True},
        {"n_keys": 32, "top_k": 16, "topk_per_axis": 16, "heads": 2, "chunk_size": 7},
    ],
)
def test_search_equals_brute_force_topk(kw):
    mem = _memory(**kw)
    c = mem.cfg
    q = torch.randn(200, c.heads * c.key_dim)
    with torch.no_grad():
        scores, slots = mem.search(q)
        bf_scores, bf_slots = mem.brute_force_topk(q)
    assert slots.shape == (200, c.heads, c.top_k)
    # exact set equality of the selected slots, per query and head
    assert torch.equal(slots.sort(-1).values, bf_slots.sort(-1).values)
    torch.testing.assert_close(scores, bf_scores, rtol=1e-5, atol=1e-5)
    # slot id a*n_keys+b really scores q . [key1_a ; key2_b] (checks the slot-id convention, not just consistency)
    q1, q2, k1, k2 = mem._halves(q)
    a, b = slots // c.n_keys, slots % c.n_keys
    h = torch.arange(c.heads).view(1, -1, 1).expand_as(a)
    direct = (q1.unsqueeze(2) * k1[h, a]).sum(-1) + (q2.unsqueeze(2) * k2[h, b]).sum(-1)
    torch.testing.assert_close(direct, scores, atol=1e-5, rtol=1e-5)


def test_too_small_grid_is_not_exact_and_is_refused():
    with pytest.raises(ValueError, match="top_k"):
        ProductKeyMemoryConfig(n_keys=16, key_dim=8, top_k=8, topk_per_axis=4)
    with pytest.raises(ValueError, match="even"):
        ProductKeyMemoryConfig(key_dim=7)


@pytest.mark.parametrize("score", ["softmax", "sigmoid"])
def test_read_is_weighted_sum_of_value_rows(score):
    mem = _memory(score=score, heads=2)
    q = torch.randn(50, 2 * 8)
    r = mem.read(q)
    expect_w = torch.softmax(r.scores, -1) if score == "softmax" else torch.sigmoid(r.scores)
    torch.testing.assert_close(r.weights, expect_w)
    table = mem.values.embedding_bags["t_test_mem"].weight
    manual = (table[r.slots] * r.weights.unsqueeze(-1)).sum((1, 2))
    torch.testing.assert_close(r.out, manual, atol=1e-6, rtol=1e-5)


def test_gradients_reach_values_keys_and_queries():
    mem = _memory()
    q = torch.randn(30, 8, requires_grad=True)
    r = mem.read(q)
    r.out.pow(2).sum().backward()
    table = mem.values.embedding_bags["t_test_mem"].weight
    touched = table.grad.abs().sum(-1) > 0
    assert set(touched.nonzero().flatten().tolist()) == set(r.slots.flatten().tolist())
    assert mem.sub_keys.grad.abs().sum() > 0
    assert q.grad.abs().sum() > 0


def test_one_million_slots_search_is_exact_on_a_few_queries():
    mem = _memory(n_keys=1024, key_dim=16, value_dim=2, top_k=8, topk_per_axis=8)
    assert mem.cfg.n_slots == 1_048_576
    q = torch.randn(4, 16)
    with torch.no_grad():
        _, slots = mem.search(q)
        _, bf = mem.brute_force_topk(q)
    assert torch.equal(slots.sort(-1).values, bf.sort(-1).values)


def test_read_into_fixed_bags_equals_plain_read():
    """Fixed bag count (same lookup batch size on every rank) must not change what each query reads."""
    mem = _memory(heads=2)
    q = torch.randn(20, 16)
    bags = torch.randperm(50)[:20]
    plain = mem.read(q)
    placed = mem.read(q, bags, 50)
    torch.testing.assert_close(placed.out, plain.out, rtol=0, atol=0)
    empty = mem.read(q[:0], bags[:0], 50)
    assert empty.out.shape == (0, 4)
