"""Batch building: rows of the training table -> one typed batch for every model and trainer.

The batch holds TorchRec KeyedJaggedTensors so the trainer can shard the embedding lookups unchanged:
- `sparse`: the sequence features (jagged, no padding: each row has its own length) plus the candidate's
  features (length 1) in one KJT, so a single EmbeddingCollection can share the item/category tables between
  the history and the candidate.
- `context`: pooled id features (user_id, request domain), length 1 each, for an EmbeddingBagCollection.
Sequences are ordered oldest -> newest; when longer than `max_len`, the most recent `max_len` are kept.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np
import pyarrow as pa
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from torchrec.streamable import Pipelineable

SEQ_KEYS = ("seq_item_id", "seq_category", "seq_action", "seq_domain")
CAND_KEYS = ("item_id", "item_category")
SPARSE_KEYS = SEQ_KEYS + CAND_KEYS
CONTEXT_KEYS = ("user_id", "domain")
# Which embedding table (vocabulary) each id feature uses: history and candidate share item/category tables.
FEATURE_VOCAB = {
    "seq_item_id": "item",
    "item_id": "item",
    "seq_category": "category",
    "item_category": "category",
    "seq_action": "action",
    "seq_domain": "domain",
    "domain": "domain",
    "user_id": "user",
}


@dataclass(frozen=True)
class BatchSpec:
    """How rows become tensors: sequence truncation and vocabulary sizes (ids are taken modulo the size)."""

    max_len: int = 256
    vocab_sizes: dict[str, int] = field(
        default_factory=lambda: {"item": 100_000, "category": 1_000, "action": 8, "domain": 16, "user": 100_000}
    )

    def size(self, feature: str) -> int:
        return self.vocab_sizes[FEATURE_VOCAB[feature]]


@dataclass
class Candidates:
    """C candidates per user for two-stage scoring: [B, C] ids."""

    item_id: torch.Tensor
    item_category: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Candidates":
        return Candidates(self.item_id.to(device, non_blocking=non_blocking), self.item_category.to(device, non_blocking=non_blocking))


@dataclass
class RankingBatch(Pipelineable):
    sparse: KeyedJaggedTensor  # SPARSE_KEYS
    context: KeyedJaggedTensor  # CONTEXT_KEYS
    seq_time_gap: torch.Tensor  # float32 [sum(seq_lengths)] aligned with the sequence values, seconds
    seq_lengths: torch.Tensor  # int64 [B]
    labels: torch.Tensor  # float32 [B]
    user_id: torch.Tensor  # int64 [B] raw ids (for GAUC)
    domain: torch.Tensor  # int64 [B] raw domain (for per-domain metrics and domain-aware models)
    item_id: torch.Tensor  # int64 [B] raw candidate ids
    ts: torch.Tensor  # int64 [B] request time, ms

    @property
    def batch_size(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "RankingBatch":
        return RankingBatch(**{f.name: getattr(self, f.name).to(device=device, non_blocking=non_blocking) for f in fields(self)})

    def record_stream(self, stream: torch.Stream) -> None:  # type: ignore[override]
        for f in fields(self):
            getattr(self, f.name).record_stream(stream)

    def candidates(self) -> Candidates:
        """The batch's own candidate as C=1 candidates (for checking two-stage == full forward)."""
        d = self.sparse.to_dict()
        return Candidates(d["item_id"].values().view(-1, 1), d["item_category"].values().view(-1, 1))

    def expand(self, candidates: Candidates) -> "RankingBatch":
        """One row per (user, candidate): row b*C + c is user b's row with candidate candidates[b, c].

        The reference for two-stage scoring (score(encode_user(b), cands)[b, c] == forward(b.expand(cands))[b*C+c])
        and its cost baseline. Candidate ids must already be inside the vocabularies (as build_batch leaves them).
        """
        B, C = candidates.item_id.shape
        rows = self.select(torch.arange(B, device=self.labels.device).repeat_interleave(C))
        d = rows.sparse.to_dict()
        item, cat = candidates.item_id.reshape(-1), candidates.item_category.reshape(-1)
        sparse = KeyedJaggedTensor(
            keys=list(SPARSE_KEYS),
            values=torch.cat([d[k].values() for k in SEQ_KEYS] + [item, cat]),
            lengths=torch.cat([d[k].lengths() for k in SEQ_KEYS] + [torch.ones_like(item), torch.ones_like(cat)]),
        )
        return RankingBatch(
            sparse=sparse,
            context=rows.context,
            seq_time_gap=rows.seq_time_gap,
            seq_lengths=rows.seq_lengths,
            labels=rows.labels,
            user_id=rows.user_id,
            domain=rows.domain,
            item_id=item,
            ts=rows.ts,
        )

    def select(self, idx: torch.Tensor) -> "RankingBatch":
        """Rows `idx` of the batch (used to split/replicate users for serving)."""
        idx = idx.to(torch.long)
        d = self.sparse.to_dict()
        c = self.context.to_dict()

        def take(jt):
            lengths = jt.lengths()
            offsets = torch.cat([lengths.new_zeros(1), torch.cumsum(lengths, 0)])
            starts, lens = offsets[idx], lengths[idx]
            gather = _ranges(starts, lens)
            return jt.values()[gather], lens

        sparse_vals, sparse_lens, ctx_vals, ctx_lens = [], [], [], []
        for k in SPARSE_KEYS:
            v, l = take(d[k])
            sparse_vals.append(v)
            sparse_lens.append(l)
        for k in CONTEXT_KEYS:
            v, l = take(c[k])
            ctx_vals.append(v)
            ctx_lens.append(l)
        offs = torch.cat([self.seq_lengths.new_zeros(1), torch.cumsum(self.seq_lengths, 0)])
        gap = self.seq_time_gap[_ranges(offs[idx], self.seq_lengths[idx])]
        return RankingBatch(
            sparse=KeyedJaggedTensor(keys=list(SPARSE_KEYS), values=torch.cat(sparse_vals), lengths=torch.cat(sparse_lens)),
            context=KeyedJaggedTensor(keys=list(CONTEXT_KEYS), values=torch.cat(ctx_vals), lengths=torch.cat(ctx_lens)),
            seq_time_gap=gap,
            seq_lengths=self.seq_lengths[idx],
            labels=self.labels[idx],
            user_id=self.user_id[idx],
            domain=self.domain[idx],
            item_id=self.item_id[idx],
            ts=self.ts[idx],
        )


def _ranges(starts: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """Concatenated arange(starts[i], starts[i]+lens[i]) without a Python loop."""
    total = int(lens.sum())
    if total == 0:
        return starts.new_zeros(0)
    rep_starts = torch.repeat_interleave(starts, lens)
    offs = torch.cumsum(lens, 0) - lens
    within = torch.arange(total, device=starts.device) - torch.repeat_interleave(offs, lens)
    return rep_starts + within


def tail_lists(col: pa.ChunkedArray | pa.Array, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Values and lengths of the last `max_len` elements of each list (vectorised)."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if col.null_count:
        raise ValueError(f"list column has {col.null_count} null rows")
    offsets = col.offsets.to_numpy().astype(np.int64)
    values = col.values.to_numpy(zero_copy_only=False)
    ends = offsets[1:]
    starts = np.maximum(offsets[:-1], ends - max_len)
    lens = ends - starts
    total = int(lens.sum())
    within = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(lens) - lens, lens)
    idx = np.repeat(starts, lens) + within
    return values[idx], lens


def build_batch(rows: pa.Table | pa.RecordBatch, spec: BatchSpec) -> RankingBatch:
    """Training-table rows -> RankingBatch (ids modulo vocab sizes, sequences truncated to the newest max_len)."""
    if isinstance(rows, pa.RecordBatch):
        rows = pa.Table.from_batches([rows])
    n = rows.num_rows

    def col(name: str) -> np.ndarray:
        return rows.column(name).to_numpy(zero_copy_only=False)

    seq_vals, seq_lens = [], None
    for k in SEQ_KEYS:
        v, lens = tail_lists(rows.column(k), spec.max_len)
        if seq_lens is not None and not np.array_equal(lens, seq_lens):
            raise ValueError(f"sequence column '{k}' has lengths that differ from '{SEQ_KEYS[0]}'")
        seq_lens = lens
        seq_vals.append(torch.from_numpy(v.astype(np.int64) % spec.size(k)))
    gap, gap_lens = tail_lists(rows.column("seq_time_gap"), spec.max_len)
    if not np.array_equal(gap_lens, seq_lens):
        raise ValueError("sequence column 'seq_time_gap' has lengths that differ from 'seq_item_id'")
    item = col("item_id").astype(np.int64)
    cat = col("item_category").astype(np.int64)
    ones = torch.ones(n, dtype=torch.long)
    seq_lengths = torch.from_numpy(seq_lens.astype(np.int64))
    sparse = KeyedJaggedTensor(
        keys=list(SPARSE_KEYS),
        values=torch.cat(seq_vals + [torch.from_numpy(item % spec.size("item_id")), torch.from_numpy(cat % spec.size("item_category"))]),
        lengths=torch.cat([seq_lengths] * len(SEQ_KEYS) + [ones, ones]),
    )
    user = col("user_id").astype(np.int64)
    domain = col("domain").astype(np.int64)
    context = KeyedJaggedTensor(
        keys=list(CONTEXT_KEYS),
        values=torch.cat([torch.from_numpy(user % spec.size("user_id")), torch.from_numpy(domain % spec.size("domain"))]),
        lengths=torch.cat([ones, ones]),
    )
    ts = rows.column("ts").cast(pa.int64()).to_numpy(zero_copy_only=False) if n else np.zeros(0, np.int64)
    return RankingBatch(
        sparse=sparse,
        context=context,
        seq_time_gap=torch.from_numpy(np.ascontiguousarray(gap, dtype=np.float32)),
        seq_lengths=seq_lengths,
        labels=torch.from_numpy(col("label").astype(np.float32)),
        user_id=torch.from_numpy(user),
        domain=torch.from_numpy(domain),
        item_id=torch.from_numpy(item),
        ts=torch.from_numpy(ts.astype(np.int64)),
    )
