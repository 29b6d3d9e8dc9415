"""ADS: generated weights differ by domain and follow shared (+|*) private, padding is inert, two-stage == forward,
the model learns a domain-dependent rule."""
from __future__ import annotations

import pytest
import torch

from recsys.config import read_yaml, validate
from recsys.data.batch import build_batch
from recsys.models.ads import ADSConfig, ADSRanker
from tests.models.ranking_rows import SPEC, assert_learns_rule, assert_two_stage_matches, padding_is_inert, random_rows, side_info_effect


def _model(**kw) -> ADSRanker:
    torch.manual_seed(0)
    cfg = ADSConfig.model_validate({"embedding": {"dim": 8}, "seq_dim": 8, "generator_hidden": 16, "hidden": [32], **kw})
    return ADSRanker(cfg, SPEC)


def test_yaml_config_loads():
    cfg = validate(ADSConfig, read_yaml("configs/ads.yaml")["model"], "configs/ads.yaml")
    assert cfg.name == "ads" and cfg.combine in ("sum", "product")


def test_yaml_is_a_valid_training_config():
    training = pytest.importorskip("recsys.training.config")
    from recsys.config import load_config

    assert load_config(training.TrainConfig, "configs/ads.yaml").model.name == "ads"


@pytest.mark.parametrize("combine", ["sum", "product"])
def test_different_domains_generate_different_weights(combine):
    model = _model(combine=combine)
    batch = build_batch(random_rows(40, seed=1, n_domains=3), SPEC)
    with torch.no_grad():
        z = model.domain_features(model.embedder(batch))
        w_seq, b_seq = model.psrg.layers[0].generate(z)
        w_q, _ = model.pcrg.generate(z)
    dom = batch.domain
    i, j = [int((dom == d).nonzero()[0]) for d in (0, 1)]
    same = [int(x) for x in (dom == 0).nonzero()[:2]]
    for w in (w_seq, w_q):
        assert not torch.allclose(w[i], w[j]), "two domains generated the same weights"
        assert torch.equal(w[same[0]], w[same[1]]), "one domain generated two different weights"
    assert not torch.allclose(b_seq[i], b_seq[j])


@pytest.mark.parametrize("combine", ["sum", "product"])
def test_generated_weight_is_shared_combined_with_private(combine):
    model = _model(combine=combine, generator_inputs=["domain", "user"])
    gen = model.psrg.layers[1]
    z = torch.randn(5, 16)
    with torch.no_grad():
        w, b = gen.generate(z)
        # private part computed here from the two-layer generator's own layers, independently of `generate`
        lin1, act, lin2 = gen.private
        p = lin2(act(lin1(z))).view(5, 1, -1)
        pw, pb = p[..., : 8 * 8].reshape(5, 1, 8, 8), p[..., 8 * 8 :]
    expect_w = gen.w_shared + pw if combine == "sum" else gen.w_shared * pw
    expect_b = gen.b_shared + pb if combine == "sum" else gen.b_shared * pb
    torch.testing.assert_close(w, expect_w, rtol=0, atol=0)
    torch.testing.assert_close(b, expect_b, rtol=0, atol=0)
    # the PSRG layer applies x W + b to every item of the sequence
    x = torch.randn(5, 7, 8)
    lone = type(model.psrg)(8, 16, 16, depth=1, combine=combine, residual=False)
    lone.layers[0] = gen
    torch.testing.assert_close(lone(x, z), torch.einsum("bli,bio->blo", x, w[:, 0]) + b[:, 0].unsqueeze(1), atol=1e-6, rtol=1e-5)


def test_pcrg_generates_several_queries_per_candidate():
    model = _model(n_queries=3)
    z = torch.randn(2, 8)
    w, b = model.pcrg.generate(z)
    assert w.shape == (2, 3, 16, 8) and b.shape == (2, 3, 8)
    cand = torch.randn(2, 5, 16)
    q = model.pcrg.project(cand, w, b)
    assert q.shape == (2, 5, 3, 8)
    torch.testing.assert_close(q[1, 4, 2], cand[1, 4] @ w[1, 2] + b[1, 2])


def test_padded_positions_do_not_affect_output_bit_identical():
    assert padding_is_inert(_model(), random_rows(10, seed=5))


def test_encode_user_caches_the_personalized_sequence():
    model = _model()
    batch = build_batch(random_rows(4, seed=2), SPEC)
    state = model.encode_user(batch)
    L = int(batch.seq_lengths.max())
    assert state.seq.shape == (4, L, 8) and state.q_weight.shape == (4, 4, 16, 8)


@pytest.mark.parametrize("combine", ["sum", "product"])
def test_two_stage_equals_forward_with_many_candidates(combine):
    assert_two_stage_matches(_model(combine=combine), random_rows(12, seed=7), C=6)


def test_model_trains_on_a_domain_dependent_problem():
    assert_learns_rule(_model())


def test_side_info_makes_time_gaps_and_positions_matter():
    """side_info on: changing only the gaps, or only the order (positions), of the history changes the logits;
    off: the model is blind to both."""
    rows = random_rows(10, seed=9, min_len=3)
    d_gap, d_pos = side_info_effect(_model(side_info=True), rows)
    # the position table starts small (std 0.02), so reordering moves the untrained logits by ~1e-5..1e-4
    assert d_gap > 1e-4 and d_pos > 2e-6, (d_gap, d_pos)
    d_gap, d_pos = side_info_effect(_model(side_info=False), rows)
    assert d_gap == 0 and d_pos < 2e-7, (d_gap, d_pos)  # float summation order only (~1e-8)


def test_padding_inert_and_two_stage_without_side_info():
    assert padding_is_inert(_model(side_info=False), random_rows(10, seed=5))
    assert_two_stage_matches(_model(side_info=False), random_rows(8, seed=7), C=4)
