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
from recsys.training.data import SEQ_COLUMNS, infer_vocab_sizes, make_spec, read_training
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
