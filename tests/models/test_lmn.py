"""LMN: memory loss trains the value table, padding is inert, two-stage scoring equals forward, the model learns."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys.config import read_yaml, validate
from recsys.data.batch import build_batch
from recsys.models.lmn import LMNConfig, LMNRanker
from tests.models.ranking_rows import SPEC, assert_learns_rule, assert_two_stage_matches, padding_is_inert, random_rows, side_info_effect


def _model(**kw) -> LMNRanker:
    torch.manual_seed(0)
    cfg = LMNConfig.model_validate({
        "embedding": {"dim": 8},
        "memory": {"n_keys": 16, "key_dim": 16, "value_dim": 8, "top_k": 4, "topk_per_axis": 4, "table_name": "t_lmn_memory"},
        "query_hidden": [16], "att_dim": 8, "hidden": [32], **kw,
    })
    return LMNRanker(cfg, SPEC)


def test_yaml_config_loads_with_a_million_slots():
    cfg = validate(LMNConfig, read_yaml("configs/lmn.yaml")["model"], "configs/lmn.yaml")
    assert cfg.name == "lmn" and cfg.memory.n_slots >= 1_000_000


def test_yaml_is_a_valid_training_config():
    training = pytest.importorskip("recsys.training.config")
    from recsys.config import load_config

    assert load_config(training.TrainConfig, "configs/lmn.yaml").model.name == "lmn"


def test_memory_loss_is_nonzero_and_backprops_into_the_value_table():
    model = _model()
    batch = build_batch(random_rows(16, seed=3), SPEC)
    state = model.encode_user(batch)
    aux = model.aux_loss(state, batch)
    assert aux.item() > 0
    aux.backward()
    table = model.memory.values.embedding_bags["t_lmn_memory"].weight
    assert table.grad is not None
    touched = (table.grad.abs().sum(-1) > 0).nonzero().flatten().tolist()
    assert len(touched) > 0 and set(touched) == set(state.slots.flatten().tolist())
    assert model.memory.sub_keys.grad.abs().sum() > 0  # through the read weights
    assert model.decoder.weight.grad.abs().sum() > 0
    # the memory loss never trains the target side: the action table only appears in the (detached) target
    action_table = model.embedder.ec.embeddings["t_action"].weight
    assert action_table.grad is None or action_table.grad.abs().sum() == 0


def test_read_positions_are_real_items_in_the_newest_window():
    model = _model(memory_len=5)
    rows = random_rows(12, seed=4)
    batch = build_batch(rows, SPEC)
    state = model.encode_user(batch)
    assert state.readout.shape[0] == int(batch.seq_lengths.clamp(max=5).sum())
    model_all = _model(memory_len=None)
    assert model_all.encode_user(batch).readout.shape[0] == int(batch.seq_lengths.sum())


def test_padded_positions_do_not_affect_output_bit_identical():
    assert padding_is_inert(_model(memory_len=None), random_rows(10, seed=5, min_len=0))


def test_value_lookup_has_a_fixed_number_of_bags_per_user():
    """A sharded table needs the same lookup batch size on every rank, whatever the history lengths."""
    seen = []
    for memory_len, max_len in [(5, 24), (5, 3), (None, 24), (100, 24)]:
        model = _model(memory_len=memory_len)
        model.memory.values.register_forward_pre_hook(lambda m, args: seen.append(args[0].stride()))
        model(build_batch(random_rows(7, seed=memory_len or 0, max_len=max_len), SPEC))
        assert seen[-1] == 7 * min(memory_len or SPEC.max_len, SPEC.max_len)


def test_empty_history_rows_score_finite():
    model = _model()
    rows = random_rows(6, seed=6, max_len=0)
    logits = model(build_batch(rows, SPEC))
    assert torch.isfinite(logits).all()


def test_two_stage_equals_forward_with_many_candidates():
    assert_two_stage_matches(_model(), random_rows(12, seed=7), C=6)
    assert_two_stage_matches(_model(memory={"n_keys": 16, "key_dim": 16, "value_dim": 8, "top_k": 4, "topk_per_axis": 6,
                                            "heads": 2, "score": "sigmoid", "query_norm": True, "key_norm": True}),
                             random_rows(9, seed=8), C=3)


def test_model_trains_on_a_tiny_problem():
    assert_learns_rule(_model())


def test_side_info_makes_time_gaps_and_positions_matter():
    """side_info on: changing only the gaps, or only the order (positions), of the history changes the logits;
    off: the model is blind to both (memory_len=None so reversing does not change which items read the memory)."""
    rows = random_rows(10, seed=9, min_len=3)
    d_gap, d_pos = side_info_effect(_model(side_info=True, memory_len=None), rows)
    # the position table starts small (std 0.02), so reordering moves the untrained logits by ~1e-5..1e-4
    assert d_gap > 1e-4 and d_pos > 2e-6, (d_gap, d_pos)
    d_gap, d_pos = side_info_effect(_model(side_info=False, memory_len=None), rows)
    assert d_gap == 0 and d_pos < 2e-7, (d_gap, d_pos)  # float summation order only (~1e-8)


def test_memory_query_ignores_side_info():
    """The memory query stays MLP([item, category, user]): the same slots are read whatever the time gaps."""
    model = _model(side_info=True)
    batch = build_batch(random_rows(8, seed=10), SPEC)
    with torch.no_grad():
        e = model.embedder(batch)
        ref = model.encode(e)
        e.time_gap = e.time_gap * 37 + 5
        other = model.encode(e)
    assert torch.equal(ref.slots, other.slots) and torch.equal(ref.readout, other.readout)
    assert not torch.equal(ref.keys, other.keys)


def test_padding_inert_and_two_stage_without_side_info():
    assert padding_is_inert(_model(memory_len=None, side_info=False), random_rows(10, seed=5, min_len=0))
    assert_two_stage_matches(_model(side_info=False), random_rows(8, seed=7), C=4)


@pytest.mark.slow
def test_row_wise_sharded_memory_trains_with_unequal_reads_per_rank(tmp_path):
    from tests.training.mp_helpers import spawn

    out = tmp_path / "losses.txt"
    spawn(2, "lmn_row_wise_memory_steps", out=str(out))
    losses = eval(out.read_text())
    assert len(losses) == 3 and all(np.isfinite(losses))
