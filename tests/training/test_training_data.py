"""The trainer's table reader (recsys/training/data.py): histories cut to the models' max_len at read time give the
batches the full table gives, row group by row group, and the vocabulary scan sees the whole stored histories."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from recsys.data.batch import BatchSpec, build_batch
from recsys.data.io import DataError
from recsys.training.config import DataConfig
from recsys.training.data import (
    SEQ_COLUMNS,
    infer_vocab_sizes,
    make_spec,
    read_training,
    shared_training_table,
    sort_by_time,
    time_split,
)
from tests.training.synth import training_rows


def _files(tmp_path: Path, tables: list[pa.Table], row_group_size: int = 37) -> list[Path]:
    out = []
    for i, t in enumerate(tables):
        p = tmp_path / f"part-{i}.parquet"
        pq.write_table(t, p, row_group_size=row_group_size)
        out.append(p)
    return out


def test_histories_cut_at_read_time_give_the_same_batches(tmp_path):
    files = _files(tmp_path, [training_rows(300, seed=0, max_len=12), training_rows(200, seed=1, max_len=12)])
    full, cut = read_training(files), read_training(files, max_len=5)
    assert pq.ParquetFile(files[0]).num_row_groups > 1 and full.num_rows == cut.num_rows == 500
    for c in SEQ_COLUMNS:  # each history = the newest 5 events of the stored one, oldest first
        assert cut.column(c).to_pylist() == [v[-5:] for v in full.column(c).to_pylist()]
    assert cut.drop(SEQ_COLUMNS).equals(full.drop(SEQ_COLUMNS)) and cut.schema.equals(full.schema)
    spec = make_spec(files, DataConfig(max_len=5))
    a, b = build_batch(full.slice(100, 64), spec), build_batch(cut.slice(100, 64), spec)
    for k in ("seq_item_id", "seq_category", "seq_action", "seq_domain"):
        assert torch.equal(a.sparse[k].values(), b.sparse[k].values()) and torch.equal(a.sparse[k].lengths(), b.sparse[k].lengths())
    assert torch.equal(a.seq_time_gap, b.seq_time_gap) and torch.equal(a.labels, b.labels)
    assert read_training(files, max_len=12).equals(full)  # nothing longer than max_len: rows untouched


def test_vocabulary_scan_sees_ids_beyond_max_len(tmp_path):
    t = training_rows(50, seed=0, max_len=12)
    seq = t.column("seq_item_id").to_pylist()
    seq[7] = [9999] + list(seq[7]) + [1] * 11  # the largest item id sits only in the oldest event of one history
    t = t.set_column(t.schema.get_field_index("seq_item_id"), "seq_item_id", pa.array(seq, pa.list_(pa.int64())))
    for c in ("seq_category", "seq_action", "seq_domain", "seq_time_gap"):  # keep every history the same length
        col = t.column(c).to_pylist()
        col[7] = col[7][:1] * (len(seq[7]) - len(col[7])) + col[7]
        t = t.set_column(t.schema.get_field_index(c), c, pa.array(col, t.schema.field(c).type))
    files = _files(tmp_path, [t], row_group_size=16)
    spec = make_spec(files, DataConfig(max_len=4))
    assert spec.vocab_sizes == infer_vocab_sizes(read_training(files)) and spec.vocab_sizes["item"] == 10000
    assert infer_vocab_sizes(read_training(files, max_len=4))["item"] < 10000


def test_unreadable_file_is_named(tmp_path):
    bad = tmp_path / "part-0.parquet"
    bad.write_bytes(b"not parquet")
    with pytest.raises(DataError, match="not a readable parquet file"):
        read_training([bad], max_len=4)
    with pytest.raises(DataError, match="not a readable parquet file"):
        make_spec([bad], DataConfig())


def test_shared_table_is_one_mapped_sorted_copy_rebuilt_when_the_data_changes(tmp_path):
    files = _files(tmp_path, [training_rows(300, seed=0, max_len=12), training_rows(200, seed=1, max_len=12)])
    cache = tmp_path / "cache"
    expected = sort_by_time(read_training(files, max_len=5))
    assert not expected.equals(read_training(files, max_len=5))  # the synthetic rows are not stored in time order
    before = pa.total_allocated_bytes()
    table = shared_training_table(files, 5, cache, is_main=True, barrier=lambda: None)
    assert pa.total_allocated_bytes() - before < expected.nbytes / 10  # zero-copy over the map, not a private copy
    assert table.equals(expected) and all(c.num_chunks == 1 for c in table.columns)  # `take` per batch stays O(batch)
    split, ref = time_split(table, DataConfig()), time_split(read_training(files, max_len=5), DataConfig())
    assert split.train.equals(ref.train) and split.validation.equals(ref.validation)
    (path,) = cache.glob("table-*.arrow")
    mtime = path.stat().st_mtime_ns
    assert shared_training_table(files, 5, cache, True, lambda: None).equals(expected)
    assert path.stat().st_mtime_ns == mtime  # reused (a resumed run does not re-read the parquet)
    assert shared_training_table(files, 5, cache, False, lambda: None).equals(expected)  # other ranks only map it
    pq.write_table(training_rows(100, seed=2, max_len=12), files[1])  # the data changed: rebuilt, the stale file gone
    (cache / f".{path.name}.999.tmp").write_bytes(b"torn")  # and a writer killed mid-file leaves nothing behind
    changed = shared_training_table(files, 5, cache, True, lambda: None)
    assert changed.equals(sort_by_time(read_training(files, max_len=5))) and changed.num_rows == 400
    assert [p.name for p in cache.glob("table-*.arrow")] != [path.name] and len(list(cache.iterdir())) == 1
    with pytest.raises(DataError, match="must see the run directory"):  # a worker on a machine without the file
        shared_training_table(files, 7, cache, is_main=False, barrier=lambda: None)
