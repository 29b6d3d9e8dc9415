"""Item-table initialisation from co-engagement (recsys/training/item_init.py): each stage equals its closed form or a
brute-force count, planted item groups come out as neighbourhoods, and the trainer's sharded table starts from it."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
import torch

from recsys.data.schemas import Action
from recsys.training.config import TrainConfig
from recsys.training.item_init import (
    ItemInitConfig, co_engagement_counts, co_engagement_table, newest_histories, ppmi, spectral_vectors,
)

CLICK, IMP, LIKE = int(Action.CLICK), int(Action.IMPRESSION), int(Action.LIKE)


def _rows(users, ts, hists, acts) -> pa.Table:
    return pa.table({
        "ts": pa.array(ts, pa.timestamp("ms", tz="UTC")),
        "user_id": pa.array(users, pa.int64()),
        "seq_item_id": pa.array(hists, pa.list_(pa.int64())),
        "seq_action": pa.array(acts, pa.list_(pa.int8())),
    })


def test_newest_histories_takes_each_users_newest_row_engaged_events_once():
    t = _rows(
        users=[7, 3, 7, 3],
        ts=[50, 10, 40, 20],
        hists=[[1, 2, 2, 5, 6], [9], [1, 2], [4, 4, 8, 4]],
        acts=[[CLICK, CLICK, LIKE, IMP, CLICK], [CLICK], [CLICK, CLICK], [CLICK, IMP, CLICK, CLICK]],
    )
    items, users = newest_histories(t)
    # user 3 (newest row ts=20): 4, (impression 4 skipped), 8, 4 -> 4 8 4; user 7 (ts=50): 1 2 (like of 2 = same) 6
    assert items.tolist() == [4, 8, 4, 1, 2, 6]
    assert users.tolist() == [0, 0, 0, 1, 1, 1]


def test_counts_equal_brute_force():
    rng = np.random.default_rng(0)
    items = rng.integers(0, 12, 300)
    users = np.sort(rng.integers(0, 9, 300))
    for window in (1, 3, 7):
        want = Counter()
        for a in range(len(items)):
            for b in range(max(0, a - window), a):
                if users[a] == users[b] and items[a] != items[b]:
                    want[(items[a], items[b])] += 1
                    want[(items[b], items[a])] += 1
        got = co_engagement_counts(items, users, 12, window).to_dense().numpy()
        dense = np.zeros((12, 12))
        for (i, j), c in want.items():
            dense[i, j] = c
        np.testing.assert_array_equal(got, dense)


def test_ppmi_equals_closed_form():
    rng = np.random.default_rng(1)
    C = rng.poisson(2.0, (10, 10)).astype(np.float64)
    C = C + C.T
    np.fill_diagonal(C, 0)
    C[3, :] = C[:, 3] = 0  # an item never co-engaged stays all-zero
    got = ppmi(torch.from_numpy(C).to_sparse().coalesce()).to_dense().numpy()
    marg = C.sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        want = np.log(C * C.sum() / np.outer(marg, marg))
    want = np.where(C > 0, np.maximum(want, 0), 0)
    np.testing.assert_allclose(got, want, atol=1e-12, rtol=0)


def test_spectral_vectors_equal_exact_svd_columns():
    rng = np.random.default_rng(2)
    Q, _ = np.linalg.qr(rng.normal(size=(30, 30)))
    s = np.r_[np.linspace(20, 1, 12), np.zeros(18)]
    M = (Q * s) @ Q.T  # symmetric, rank 12 (within the randomised SVD's oversampling: exact), distinct singular values
    for power, drop in ((0.0, 1), (0.5, 0), (1.0, 2)):
        got = spectral_vectors(torch.from_numpy(M).to_sparse(), 5, power, drop, seed=0).numpy()
        want = Q[:, drop:drop + 5] * s[drop:drop + 5] ** power
        signs = np.sign((got * want).sum(0))  # singular vectors are defined up to sign
        np.testing.assert_allclose(got * signs, want, atol=1e-8)
    with pytest.raises(ValueError, match="drop_top"):
        spectral_vectors(torch.from_numpy(M).to_sparse(), 29, 0.0, 2, seed=0)


def test_planted_groups_become_neighbourhoods():
    """Users engage within one of 6 hidden groups of 40 items (plus 10% noise): each item's nearest neighbour by
    cosine lies in its own group, and unengaged items are reported as such."""
    rng = np.random.default_rng(3)
    n_items, groups, size = 260, 6, 40  # items 240..259 are never engaged
    users, ts, hists, acts = [], [], [], []
    for u in range(300):
        g = rng.integers(groups)
        h = np.where(rng.random(30) < 0.9, g * size + rng.integers(0, size, 30), rng.integers(0, groups * size, 30))
        users.append(u), ts.append(u), hists.append(h.tolist()), acts.append([CLICK] * 30)
    vec, engaged = co_engagement_table(_rows(users, ts, hists, acts), n_items, 8, ItemInitConfig(method="co_engagement"))
    assert engaged.tolist() == [True] * 240 + [False] * 20
    v = vec[:240].numpy()
    assert np.linalg.norm(v, axis=1).mean() == pytest.approx(1.0, rel=1e-5)
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    sim = v @ v.T
    np.fill_diagonal(sim, -np.inf)
    group = np.arange(240) // size
    assert (group[sim.argmax(1)] == group).mean() > 0.95


def test_config_names_the_field():
    with pytest.raises(Exception, match="item_init.window"):
        TrainConfig.model_validate({"model": {"name": "pooling"}, "item_init": {"window": 0}})
    with pytest.raises(Exception, match="item_init.method"):
        TrainConfig.model_validate({"model": {"name": "pooling"}, "item_init": {"method": "word2vec"}})


@pytest.mark.slow
def test_trainer_starts_from_the_init_on_row_wise_shards(train_data, spec_dict, tmp_path):
    """2 workers, item table row-wise sharded, one step at a negligible embedding lr: the exported item table holds
    the co-engagement vectors in the engaged rows and the seed's random init in the others. The models see 4 events
    (the trainer's table is cut to them), the init the whole stored histories (up to 12)."""
    from recsys.models.registry import build_model
    from recsys.training.data import find_table_files, read_training, time_split
    from recsys.training.export import export_run, load_exported
    from recsys.training.item_init import item_weight
    from recsys.training.loop import seed_everything
    from recsys.data.batch import BatchSpec
    from tests.training.mp_helpers import spawn, train_config, worker_job

    cfg = train_config("row_wise", max_steps=1, item_init={"method": "co_engagement", "window": 4},
                       optimizer={"embedding_lr": 1e-9, "lr": 1e-9}, data={"batch_size": 32, "max_len": 4})
    spec_dict = dict(spec_dict, max_len=4)
    run = tmp_path / "run"
    spawn(2, "train_steps_only", job=worker_job(cfg, spec_dict, train_data, run))
    export_run(run, tmp_path / "model")
    got = item_weight(load_exported(tmp_path / "model").model).detach()

    train = time_split(read_training(find_table_files(train_data)), cfg.data).train
    vec, engaged = co_engagement_table(train, got.shape[0], got.shape[1], cfg.item_init)
    seed_everything(cfg.seed)
    fresh = item_weight(build_model(cfg.model, BatchSpec(**spec_dict))).detach()
    assert 100 < int(engaged.sum()) < got.shape[0]
    np.testing.assert_allclose(got[engaged].numpy(), vec[engaged].numpy(), atol=1e-6, rtol=0)
    np.testing.assert_allclose(got[~engaged].numpy(), fresh[~engaged].numpy(), atol=1e-6, rtol=0)
    assert not np.allclose(got[engaged].numpy(), fresh[engaged].numpy(), atol=1e-3)


def test_a_failed_init_raises_on_every_rank(train_data, spec_dict, tmp_path):
    """Rank 0 computes the init and broadcasts it; when it fails (here: more components dropped than items engaged),
    every rank raises the same error instead of waiting on the broadcast."""
    from tests.training.mp_helpers import spawn, train_config, worker_job

    cfg = train_config("row_wise", max_steps=1, item_init={"method": "co_engagement", "drop_top": 100000})
    job = worker_job(cfg, spec_dict, train_data, tmp_path / "run")
    spawn(2, "train_expecting_value_error", job=job, out=str(tmp_path))
    errors = [(tmp_path / f"error_{r}.txt").read_text() for r in range(2)]
    assert errors[0] == errors[1] and "fewer than embedding dim + drop_top" in errors[0]


def test_newest_rows_from_files_equal_the_split_path(tmp_path):
    """The init reads each user's newest pre-boundary row straight from the files (two projected passes over row
    groups); it picks the rows the in-memory split picks, ties in time included."""
    import pyarrow.parquet as pq

    from recsys.training.config import DataConfig
    from recsys.training.data import read_training, time_split
    from recsys.training.item_init import newest_training_rows
    from tests.training.synth import training_rows

    files = []
    for i in range(2):
        t = training_rows(300, seed=i, max_len=12)
        ts = t.column("ts").cast(pa.int64()).to_numpy() // 7000 * 7000  # 7 rows per timestamp: ties
        t = t.set_column(t.schema.get_field_index("ts"), "ts", pa.array(ts, pa.timestamp("ms", tz="UTC")))
        files.append(tmp_path / f"part-{i}.parquet")
        pq.write_table(t, files[-1], row_group_size=41)
    split = time_split(read_training(files), DataConfig(validation_fraction=0.3))
    want_items, want_users = newest_histories(split.train)
    got_items, got_users = newest_histories(newest_training_rows(files, split.boundary_ms))
    assert len(want_items) > 500
    np.testing.assert_array_equal(got_items, want_items)
    np.testing.assert_array_equal(got_users, want_users)
