"""The shared contract of every ranker in the registry (parametrized over `MODELS`, so a newly registered model is
covered automatically):

- two-stage serving equals the full forward per (user, candidate) pair in fp32 (max abs diff <= 1e-5), for the
  batch's own candidate (C=1) and for C>1 candidates per user (against forward on the batch replicated per
  candidate, `RankingBatch.expand`), with the hashed n-gram input on and off;
- the candidate actually changes the scores (so the comparison above can fail);
- with the options on (cross features for every model, recency / category-match biases, attention mass and the
  history's action, the pooling baseline's DLRM dot interaction where a model has them) and off; the biases (zero at init) get random values first, so one applied on one path only fails;
- a few optimizer steps reduce the loss on a tiny learnable problem.

Model sizes: `TINY[name]` overrides the config defaults (embedding dim 8 unless given). A model without an entry
runs with its own defaults, which may be slow: add a line here when registering a model.
"""
from __future__ import annotations

import copy

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F

from recsys.data.batch import Candidates, build_batch
from recsys.models.registry import MODELS
from tests.models.ranking_rows import SPEC, random_rows, randomize_attention_biases, rule_rows

TOL = 1e-5
ON = {"recency_bias": True, "attention_mass": True, "match_bias": True}  # off by default, on in configs/
OPTIONS = {*ON, "history_action", "attention_len", "profile", "interaction"}  # dropped by build(options=False)
TINY: dict[str, dict] = {
    "pooling": {"hidden": [16], "interaction": "dot"},
    "din": {"attention_hidden": [16], "hidden": [16], "history_action": True, "attention_len": 8, "profile": "sum", "recency_bias": True,
            "interaction": "dot"},
    "transformer": {"d_model": 16, "heads": 2, "item_dim": 8, "layers": 2, "head_hidden": [16]},
    # merge_k=4 over histories of up to 24 items -> up to 6 merged tokens, recent_k=3 of them as queries
    "longer": {"d_model": 16, "heads": 2, "item_dim": 8, "merge_k": 4, "recent_k": 3, "self_layers": 2, "head_hidden": [16],
               **ON},
    "lmn": {
        "memory": {"n_keys": 16, "key_dim": 16, "value_dim": 8, "top_k": 4, "topk_per_axis": 4, "table_name": "t_lmn_memory"},
        "query_hidden": [16], "att_dim": 8, "hidden": [32], **ON, "history_action": True, "profile": "sum",
        "interaction": "dot",
    },
    "ads": {"seq_dim": 8, "generator_hidden": 16, "hidden": [32], **ON, "interaction": "dot"},
}
NAMES = sorted(MODELS)


def build(name: str, ngram: bool = False, options: bool = True, **overrides) -> torch.nn.Module:
    """The TINY model; `options=True` adds the cross features (LONGER: as a global token), `False` drops them and
    the attention options (the architecture their defaults give); `overrides` replace config fields."""
    cfg_cls, model_cls = MODELS[name]
    data = {k: v for k, v in copy.deepcopy(TINY.get(name, {})).items() if options or k not in OPTIONS}
    data.update(overrides)
    emb = data.setdefault("embedding", {})
    emb.setdefault("dim", 8)
    emb["ngram"] = {"enabled": ngram, "orders": [2, 3], "table_size": 97}
    if options:
        emb["category_share"] = [0.5, 0.9, 1.0]
        if name == "longer":
            data["global_tokens"] = ["candidate", "cls", "user", "domain", "cross"]
    torch.manual_seed(0)
    return randomize_attention_biases(model_cls(cfg_cls.model_validate(data), SPEC))


def random_candidates(B: int, C: int, seed: int) -> Candidates:
    g = torch.Generator().manual_seed(seed)
    return Candidates(
        torch.randint(0, SPEC.vocab_sizes["item"], (B, C), generator=g),
        torch.randint(0, SPEC.vocab_sizes["category"], (B, C), generator=g),
    )


@pytest.mark.parametrize("ngram", [False, True], ids=["ngram_off", "ngram_on"])
@pytest.mark.parametrize("name", NAMES)
def test_two_stage_equals_forward_own_candidate(name, ngram):
    model = build(name, ngram).eval()
    batch = build_batch(random_rows(12, seed=5), SPEC)
    with torch.no_grad():
        full = model(batch)
        two = model.score(model.encode_user(batch), batch.candidates())
    assert full.shape == (12,) and two.shape == (12, 1)
    assert full.dtype == torch.float32 and torch.isfinite(full).all()
    diff = (two[:, 0] - full).abs().max().item()
    assert diff <= TOL, f"{name}: two-stage differs from forward by {diff}"


# every model also runs without its options (cross features, attention options)
NAME_OPTIONS = [(n, o) for n in NAMES for o in (True, False)]


@pytest.mark.parametrize("ngram", [False, True], ids=["ngram_off", "ngram_on"])
@pytest.mark.parametrize("name,options", NAME_OPTIONS, ids=[f"{n}-{'opt' if o else 'noopt'}" for n, o in NAME_OPTIONS])
def test_two_stage_equals_forward_many_candidates(name, options, ngram):
    model = build(name, ngram, options).eval()
    B, C = 10, 7
    batch = build_batch(random_rows(B, seed=11), SPEC)
    cands = random_candidates(B, C, seed=3)
    with torch.no_grad():
        two = model.score(model.encode_user(batch), cands)
        full = model(batch.expand(cands)).view(B, C)
    assert two.shape == (B, C)
    diff = (two - full).abs().max().item()
    assert diff <= TOL, f"{name}: two-stage differs from forward by {diff} (C={C})"
    # the candidate must matter, otherwise the comparison proves nothing
    assert two.std(dim=1).min().item() > 1e-4, f"{name}: scores do not depend on the candidate"


@pytest.mark.parametrize("name,options", NAME_OPTIONS, ids=[f"{n}-{'opt' if o else 'noopt'}" for n, o in NAME_OPTIONS])
def test_history_actions_reach_the_scores(name, options):
    """Our histories hold impressions and clicks alike, so every model (with its options: DIN and LMN only through
    `history_action`) must read the action; with the options off DIN and LMN must not (the switch is real)."""
    model = build(name, options=options).eval()
    rows = random_rows(10, seed=7, min_len=4)
    flipped = rows.set_column(
        rows.schema.get_field_index("seq_action"), "seq_action",
        pa.array([[1 + (a % 4) for a in r] for r in rows.column("seq_action").to_pylist()], pa.list_(pa.int8())),
    )
    with torch.no_grad():
        d = (model(build_batch(rows, SPEC)) - model(build_batch(flipped, SPEC))).abs().max().item()
    if options or "history_action" not in MODELS[name][0].model_fields:
        assert d > 1e-4, f"{name}: scores ignore the history's actions"
    else:
        assert d == 0.0, f"{name}: history_action off but the actions moved the scores by {d}"


def test_expand_replicates_users_with_each_candidate():
    batch = build_batch(random_rows(3, seed=2), SPEC)
    cands = random_candidates(3, 4, seed=0)
    ex = batch.expand(cands)
    assert ex.batch_size == 12
    assert torch.equal(ex.candidates().item_id.view(3, 4), cands.item_id)
    assert torch.equal(ex.candidates().item_category.view(3, 4), cands.item_category)
    assert torch.equal(ex.seq_lengths, batch.seq_lengths.repeat_interleave(4))
    d, d0 = ex.sparse.to_dict(), batch.sparse.to_dict()
    row = d["seq_item_id"].to_dense()
    assert torch.equal(row[5], d0["seq_item_id"].to_dense()[1])


@pytest.mark.parametrize("name", NAMES)
def test_training_steps_reduce_loss(name):
    model = build(name)
    batch = build_batch(rule_rows(64, seed=4), SPEC)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    losses = []
    for _ in range(20):
        logits, aux = model(batch, return_aux=True)
        bce = F.binary_cross_entropy_with_logits(logits, batch.labels)
        opt.zero_grad()
        (bce + aux).backward()
        opt.step()
        losses.append(bce.item())
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.7 * losses[0], f"{name}: BCE went {losses[0]:.4f} -> {losses[-1]:.4f}"
