"""Masked multi-head attention, the KV-cached serving path, and the transformer block's norm placements
(HybridNorm checked against its formula)."""
from __future__ import annotations

import pytest
import torch

from recsys.layers.attention import KV, MultiHeadAttention
from recsys.layers.block import TransformerBlock


def _reference_attention(attn: MultiHeadAttention, xq, xkv, mask, norms=None):
    """softmax(QK^T/sqrt(d_h)) V per head with a -inf mask, from the raw projection weights."""
    q, k, v = attn.q_proj(xq), attn.k_proj(xkv), attn.v_proj(xkv)
    if norms is not None:
        q, k, v = norms[0](q), norms[1](k), norms[2](v)
    B, Nq, D = q.shape
    H, hd = attn.heads, attn.head_dim
    q = q.view(B, Nq, H, hd).transpose(1, 2)
    k = k.view(B, -1, H, hd).transpose(1, 2)
    v = v.view(B, -1, H, hd).transpose(1, 2)
    s = (q @ k.transpose(-1, -2)) / hd**0.5
    s = s.masked_fill(~mask.unsqueeze(1), float("-inf"))
    o = (s.softmax(-1) @ v).transpose(1, 2).reshape(B, Nq, D)
    return attn.out_proj(o)


def test_masked_attention_matches_the_reference_and_ignores_invisible_keys():
    torch.manual_seed(0)
    attn = MultiHeadAttention(16, 4)
    xq, xkv = torch.randn(3, 5, 16), torch.randn(3, 9, 16)
    mask = torch.rand(3, 5, 9) > 0.4
    mask[..., 0] = True
    out, kv = attn(xq, xkv, mask)
    assert out.shape == (3, 5, 16) and kv.k.shape == (3, 4, 9, 4)
    assert torch.allclose(out, _reference_attention(attn, xq, xkv, mask), atol=1e-6)
    # a key that no query sees can hold anything: the output is bit-identical
    mask[:, :, 8] = False
    out1, _ = attn(xq, xkv, mask)
    xkv2 = xkv.clone()
    xkv2[:, 8] = 1e3 * torch.randn(3, 16)
    out2, _ = attn(xq, xkv2, mask)
    assert torch.equal(out1, out2)


def test_attend_cached_equals_attention_over_the_concatenated_keys():
    torch.manual_seed(1)
    attn = MultiHeadAttention(16, 2)
    B, C, m, T = 2, 5, 3, 7
    seq = torch.randn(B, T, 16)
    seq_valid = torch.rand(B, T) > 0.3
    glob = torch.randn(B, C, m, 16)
    own_mask = torch.tensor([[True, False, True], [True, True, True], [False, False, True]])
    cached = attn.project_kv(seq)
    got = attn.attend_cached(attn.project_q(glob), cached, seq_valid, attn.project_kv(glob), own_mask)
    assert got.shape == (B, C, m, 16)
    for c in range(C):  # reference: each candidate group separately over [seq ; its own globals]
        keys = torch.cat([seq, glob[:, c]], 1)
        mask = torch.cat([seq_valid.unsqueeze(1).expand(B, m, T), own_mask.expand(B, m, m)], 2)
        ref, _ = attn(glob[:, c], keys, mask)
        assert torch.allclose(got[:, c], ref, atol=1e-6)


def test_qkv_norm_is_applied_after_projection():
    torch.manual_seed(2)
    attn = MultiHeadAttention(8, 2, qkv_norm="layernorm")
    x = torch.randn(2, 4, 8) * 5 + 3
    mask = torch.ones(2, 4, 4, dtype=torch.bool)
    ref = _reference_attention(attn, x, x, mask, norms=(attn.q_norm, attn.k_norm, attn.v_norm))
    assert torch.allclose(attn(x, x, mask)[0], ref, atol=1e-6)
    kv = attn.project_kv(x)  # normalised V: zero mean / unit variance over the full width before the head split
    v = kv.v.transpose(1, 2).reshape(2, 4, 8)
    assert torch.allclose(v.mean(-1), torch.zeros(2, 4), atol=1e-5)


@pytest.mark.parametrize("norm", ["pre", "post", "hybrid"])
def test_block_matches_its_norm_formula(norm):
    torch.manual_seed(3)
    blk = TransformerBlock(8, 2, ffn_mult=2, norm=norm)
    x = torch.randn(2, 5, 8)
    mask = torch.tril(torch.ones(5, 5, dtype=torch.bool)).expand(2, 5, 5)
    a = blk.attn
    if norm == "pre":
        h = blk.norm1(x)
        x1 = x + _reference_attention(a, h, h, mask)
        want = x1 + blk.ffn(blk.norm2(x1))
    elif norm == "post":
        x1 = blk.norm1(x + _reference_attention(a, x, x, mask))
        want = blk.norm2(x1 + blk.ffn(x1))
    else:  # HybridNorm: x' = x + Attn(N(xWq), N(xWk), N(xWv)); out = N(x' + FFN(x'))
        x1 = x + _reference_attention(a, x, x, mask, norms=(a.q_norm, a.k_norm, a.v_norm))
        want = blk.norm2(x1 + blk.ffn(x1))
        assert isinstance(blk.norm1, torch.nn.Identity)
    assert torch.allclose(blk(x, mask=mask), want, atol=1e-5)


def test_block_forward_cached_equals_forward_on_each_group():
    torch.manual_seed(4)
    for norm in ("pre", "hybrid"):
        blk = TransformerBlock(8, 2, norm=norm)
        B, C, m, T = 2, 3, 2, 6
        seq, glob = torch.randn(B, T, 8), torch.randn(B, C, m, 8)
        valid = torch.ones(B, T, dtype=torch.bool)
        valid[0, :2] = False
        got = blk.forward_cached(glob, blk.kv(seq), valid)
        for c in range(C):
            keys = torch.cat([seq, glob[:, c]], 1)
            mask = torch.cat([valid.unsqueeze(1).expand(B, m, T), torch.ones(B, m, m, dtype=torch.bool)], 2)
            assert torch.allclose(got[:, c], blk(glob[:, c], keys, mask), atol=1e-6)


def test_bad_head_count_is_an_error():
    with pytest.raises(ValueError, match="heads"):
        MultiHeadAttention(10, 4)
    assert isinstance(MultiHeadAttention(8, 2).project_kv(torch.randn(1, 3, 8)), KV)
