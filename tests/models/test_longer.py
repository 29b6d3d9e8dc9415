"""LONGER: the visibility rule (mask unit test and bit-identical candidate independence of every sequence-token
state), the KV cache, norm options, bf16 autocast, activation checkpointing, right-aligned merging, config."""
from __future__ import annotations

import copy
import itertools

import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F

import recsys.models.longer as longer_mod
from recsys.config import ConfigError, read_yaml, validate
from recsys.data.batch import Candidates, build_batch
from recsys.models.longer import LongerConfig, LongerRanker, visibility_mask
from tests.models.ranking_rows import SPEC, random_rows, randomize_attention_biases, rule_rows

BASE = {"embedding": {"dim": 8}, "d_model": 16, "heads": 2, "item_dim": 8, "merge_k": 4, "recent_k": 3,
        "self_layers": 2, "head_hidden": [16], "recency_bias": True, "attention_mass": True, "match_bias": True}


def _model(**kw) -> LongerRanker:
    torch.manual_seed(0)
    return randomize_attention_biases(LongerRanker(LongerConfig.model_validate({**copy.deepcopy(BASE), **kw}), SPEC))


def _two_candidate_batches(n=10, seed=7):
    batch = build_batch(random_rows(n, seed=seed), SPEC)
    g = torch.Generator().manual_seed(seed)
    c1 = Candidates(torch.randint(0, 500, (n, 1), generator=g), torch.randint(0, 20, (n, 1), generator=g))
    c2 = Candidates(torch.randint(0, 500, (n, 1), generator=g), torch.randint(0, 20, (n, 1), generator=g))
    return batch.expand(c1), batch.expand(c2)


# -- the mask -------------------------------------------------------------------------------------------------
def test_visibility_mask_matches_the_rule_elementwise():
    T, k, m = 6, 4, 3
    k_pos = torch.arange(T)
    q_pos = k_pos[T - k :]
    k_valid = torch.tensor([[False, False, True, True, True, True], [True] * 6, [False] * 5 + [True], [False] * 6])
    mask = visibility_mask(q_pos, k_pos, k_valid, m)
    assert mask.shape == (4, k + m, T + m)
    for b, i, j in itertools.product(range(4), range(k + m), range(T + m)):
        q_is_seq, k_is_seq = i < k, j < T
        if q_is_seq and k_is_seq:
            t, s = int(q_pos[i]), int(k_pos[j])
            want = s <= t and (bool(k_valid[b, j]) or s == t)  # never newer; padding only to itself
        elif q_is_seq:
            want = False  # sequence tokens never see global tokens
        elif k_is_seq:
            want = bool(k_valid[b, j])  # global tokens see every real sequence token
        else:
            want = True  # ... and every global token
        assert bool(mask[b, i, j]) == want, (b, i, j)
    # every query row sees at least one key (no all-masked softmax rows)
    assert mask.any(-1).all()


@pytest.mark.parametrize("norm", ["pre", "post", "hybrid"])
def test_changing_the_candidate_leaves_every_sequence_state_bit_identical(norm):
    model = _model(norm=norm, inner_trans=True).eval()
    b1, b2 = _two_candidate_batches()
    with torch.no_grad():
        l1, s1 = model.forward_states(b1, keep_states=True)
        l2, s2 = model.forward_states(b2, keep_states=True)
    assert len(s1) == 2 + model.cfg.self_layers  # merged tokens, layer-1 outputs, each self layer
    for layer, (a, b) in enumerate(zip(s1, s2)):
        assert torch.equal(a, b), f"sequence-token states of layer {layer} depend on the candidate"
    assert (l1 - l2).abs().min() > 0, "the candidate did not change the logits"


def test_bit_identity_test_catches_a_leaky_mask(monkeypatch):
    """Negative control: if sequence tokens could see global tokens, the states above would differ."""
    real = longer_mod.visibility_mask

    def leaky(q_pos, k_pos, k_valid, n_global):
        mask = real(q_pos, k_pos, k_valid, n_global)
        if n_global:
            mask[:, : q_pos.shape[0], k_pos.shape[0] :] = True
        return mask

    monkeypatch.setattr(longer_mod, "visibility_mask", leaky)
    model = _model().eval()
    b1, b2 = _two_candidate_batches()
    with torch.no_grad():
        _, s1 = model.forward_states(b1, keep_states=True)
        _, s2 = model.forward_states(b2, keep_states=True)
    assert torch.equal(s1[0], s2[0])  # the merged inputs are still candidate-free
    assert not torch.equal(s1[1], s2[1])


def _edit_lists(rows: pa.Table, fn) -> pa.Table:
    """Apply fn to every sequence list of every row."""
    for col in ("seq_item_id", "seq_category", "seq_action", "seq_domain", "seq_time_gap"):
        vals = [fn(list(v)) for v in rows.column(col).to_pylist()]
        rows = rows.set_column(rows.schema.get_field_index(col), col, pa.array(vals, rows.schema.field(col).type))
    return rows


def test_newer_history_does_not_change_older_token_states():
    """Causality: the states of the older merged tokens are the same whether or not newer events follow them."""
    # every merged token is a query (recent_k >= T) so all states are observable; positions count from the oldest
    # event so an item keeps its position embedding when newer events are appended
    model = _model(recent_k=100, self_layers=1, position="from_oldest").eval()
    rows = random_rows(3, seed=3, max_len=16, min_len=16)
    full = build_batch(rows, SPEC)
    short = build_batch(_edit_lists(rows, lambda v: v[:12]), SPEC)  # drop the 4 newest events (one merged token)
    with torch.no_grad():
        _, s_full = model.forward_states(full, keep_states=True)
        _, s_short = model.forward_states(short, keep_states=True)
    assert [s.shape[1] for s in s_full] == [4, 4, 4] and [s.shape[1] for s in s_short] == [3, 3, 3]
    for a, b in zip(s_full, s_short):
        assert torch.allclose(a[:, :3], b, atol=1e-6), "an older token saw a newer one"


def test_old_history_reaches_the_logit_through_layer1_keys():
    """Only the k most recent merged tokens are queries, but all merged tokens are keys for the global tokens."""
    model = _model(recent_k=1, self_layers=1).eval()
    rows = random_rows(4, seed=9, max_len=24, min_len=24)
    items = [list(v) for v in rows.column("seq_item_id").to_pylist()]
    for v in items:
        v[0] = (v[0] + 17) % 500  # the oldest event, far outside the single recent query token
    changed = rows.set_column(rows.schema.get_field_index("seq_item_id"), "seq_item_id", pa.array(items, pa.list_(pa.int64())))
    with torch.no_grad():
        a = model(build_batch(rows, SPEC))
        b = model(build_batch(changed, SPEC))
    assert (a - b).abs().min() > 0


# -- the KV cache ----------------------------------------------------------------------------------------------
def test_encode_user_is_the_per_layer_kv_cache_of_the_sequence_side():
    model = _model().eval()
    b1, b2 = _two_candidate_batches(n=6)
    with torch.no_grad():
        st1, st2 = model.encode_user(b1), model.encode_user(b2)
    T = b1.seq_lengths.max().item() // 4 + (b1.seq_lengths.max().item() % 4 > 0)
    assert len(st1.kv) == 1 + model.cfg.self_layers
    assert st1.kv[0].k.shape == (6, 2, T, 8)  # layer 1: every merged token
    for kv in st1.kv[1:]:
        assert kv.k.shape == (6, 2, 3, 8) and kv.v.shape == (6, 2, 3, 8)  # self layers: the k recent tokens
    for x, y in zip(st1.kv, st2.kv):
        assert torch.equal(x.k, y.k) and torch.equal(x.v, y.v)
    assert st1.nbytes() > 0


@pytest.mark.parametrize(
    "kw",
    [
        {"norm": "hybrid"},
        {"norm": "post", "norm_type": "rmsnorm"},
        {"inner_trans": False},
        {"recent_k": 100},  # k >= T: layer 1 is causal self-attention over all tokens
        {"self_layers": 0},
        {"global_tokens": ["cls", "candidate", "cls"], "position": "from_oldest"},
        {"merge_k": 1},
    ],
    ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()),
)
def test_two_stage_equals_forward_for_each_option(kw):
    model = _model(**kw).eval()
    B, C = 8, 5
    batch = build_batch(random_rows(B, seed=21), SPEC)
    g = torch.Generator().manual_seed(0)
    cands = Candidates(torch.randint(0, 500, (B, C), generator=g), torch.randint(0, 20, (B, C), generator=g))
    with torch.no_grad():
        two = model.score(model.encode_user(batch), cands)
        full = model(batch.expand(cands)).view(B, C)
    assert (two - full).abs().max().item() <= 1e-5


# -- layout ----------------------------------------------------------------------------------------------------
def test_right_aligned_layout_puts_the_newest_event_last():
    model = _model()
    batch = build_batch(random_rows(5, seed=2, max_len=10, min_len=0), SPEC)
    e = model.embedder(batch)
    feats, gap, pos, valid, cats = model._right_aligned(e)
    assert feats.shape[1] == 12  # ceil(10 / 4) * 4
    for b, n in enumerate(batch.seq_lengths.tolist()):
        assert valid[b].sum() == n and (not n or valid[b, -n:].all())
        if n:
            assert torch.equal(feats[b, -1, :8], e.seq["seq_item_id"][b, n - 1])  # newest item at the end
            assert torch.equal(gap[b, -n:], e.time_gap[b, :n])
            assert torch.equal(cats[b, -n:], e.seq_category_ids[b, :n])
    assert torch.equal(pos[0], torch.arange(11, -1, -1))  # from_newest: 0 = newest


# -- training engineering ------------------------------------------------------------------------------------
def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_activation_checkpointing_gives_the_same_gradients_and_recomputes():
    batch = build_batch(rule_rows(16, seed=1), SPEC)
    results = {}
    for ckpt in (False, True):
        model = _model(activation_checkpointing=ckpt, inner_trans=True).train()
        calls = []
        model.cross.register_forward_pre_hook(lambda *a: calls.append(1))  # (recompute may stop early)
        loss = F.binary_cross_entropy_with_logits(model(batch), batch.labels)
        loss.backward()
        results[ckpt] = (loss.detach(), _grads(model), len(calls))
    (l0, g0, n0), (l1, g1, n1) = results[False], results[True]
    assert torch.equal(l0, l1)
    assert g0.keys() == g1.keys() and len(g0) > 10
    for name in g0:
        assert torch.allclose(g0[name], g1[name], rtol=1e-5, atol=1e-7), name
    assert (n0, n1) == (1, 2), "checkpointing did not recompute the block in backward"


def test_bf16_autocast_trains_and_stays_close_to_fp32():
    batch = build_batch(rule_rows(16, seed=1), SPEC)
    fp32 = _model().train()
    bf16 = _model(bf16=True).train()
    dtypes = []
    bf16.cross.attn.q_proj.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    logits = bf16(batch)
    assert dtypes and set(dtypes) == {torch.bfloat16} and logits.dtype == torch.float32
    F.binary_cross_entropy_with_logits(logits, batch.labels).backward()
    assert all(torch.isfinite(p.grad).all() for p in bf16.parameters() if p.grad is not None)
    assert (logits - fp32(batch)).abs().max().item() < 0.05
    bf16.eval()
    with torch.no_grad():  # the serving path runs under bf16 too and agrees with forward to bf16 precision
        two = bf16.score(bf16.encode_user(batch), batch.candidates())[:, 0]
        assert (two - bf16(batch)).abs().max().item() < 0.05


# -- config ----------------------------------------------------------------------------------------------------
def test_yaml_config_loads_and_bad_configs_name_the_problem():
    cfg = validate(LongerConfig, read_yaml("configs/longer.yaml")["model"], "configs/longer.yaml")
    assert cfg.name == "longer" and cfg.merge_k >= 1 and "candidate" in cfg.global_tokens
    with pytest.raises(ConfigError, match="candidate"):
        validate(LongerConfig, {"global_tokens": ["cls", "user"]})
    with pytest.raises(ConfigError, match="heads"):
        validate(LongerConfig, {"d_model": 30, "heads": 4})
