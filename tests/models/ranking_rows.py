"""Small synthetic training-table rows for model tests (TRAINING-schema columns that `build_batch` reads)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from recsys.data.batch import BatchSpec, Candidates, RankingBatch, build_batch

SPEC = BatchSpec(max_len=32, vocab_sizes={"item": 500, "category": 20, "action": 5, "domain": 4, "user": 200})


def random_rows(n: int, seed: int = 0, max_len: int = 24, min_len: int = 0, n_domains: int = 3) -> pa.Table:
    """n impressions with histories of random length in [min_len, max_len] (ragged: padding differs per row)."""
    rng = np.random.default_rng(seed)
    lens = rng.integers(min_len, max_len + 1, n)
    lens[0] = max_len  # at least one full row so the others are padded

    def lists(gen, typ):
        return pa.array([gen(int(k)).tolist() for k in lens], pa.list_(typ))

    return pa.table({
        "ts": pa.array(1_700_000_000_000 + np.arange(n, dtype=np.int64) * 1000, pa.timestamp("ms", tz="UTC")),
        "user_id": pa.array(rng.integers(0, 200, n), pa.int64()),
        "item_id": pa.array(rng.integers(0, 500, n), pa.int64()),
        "domain": pa.array(rng.integers(0, n_domains, n), pa.int32()),
        "item_category": pa.array(rng.integers(0, 20, n), pa.int64()),
        "label": pa.array(rng.integers(0, 2, n), pa.int8()),
        "seq_item_id": lists(lambda k: rng.integers(0, 500, k), pa.int64()),
        "seq_category": lists(lambda k: rng.integers(0, 20, k), pa.int64()),
        "seq_action": lists(lambda k: rng.integers(1, 5, k), pa.int8()),
        "seq_domain": lists(lambda k: rng.integers(0, n_domains, k), pa.int32()),
        "seq_time_gap": lists(lambda k: rng.random(k) * 1e5, pa.float32()),
    })


def with_candidate(rows: pa.Table, item_id: np.ndarray, item_category: np.ndarray) -> pa.Table:
    """The same rows (users, histories) with another candidate each."""
    rows = rows.set_column(rows.schema.get_field_index("item_id"), "item_id", pa.array(item_id, pa.int64()))
    return rows.set_column(rows.schema.get_field_index("item_category"), "item_category", pa.array(item_category, pa.int64()))


def assert_two_stage_matches(model: torch.nn.Module, rows: pa.Table, C: int = 5, seed: int = 1, tol: float = 1e-5) -> None:
    """score(encode_user(b), C candidates)[:, j] == forward(b with candidate j) for every j."""
    rng = np.random.default_rng(seed)
    n = rows.num_rows
    items, cats = rng.integers(0, 500, (n, C)), rng.integers(0, 20, (n, C))
    model.eval()
    with torch.no_grad():
        batch = build_batch(rows, SPEC)
        two_stage = model.score(model.encode_user(batch), Candidates(torch.from_numpy(items), torch.from_numpy(cats)))
        assert two_stage.shape == (n, C)
        for j in range(C):
            full = model(build_batch(with_candidate(rows, items[:, j], cats[:, j]), SPEC))
            diff = (two_stage[:, j] - full).abs().max().item()
            assert diff <= tol, f"candidate {j}: two-stage differs from forward by {diff}"


def rule_rows(n: int, seed: int = 0, max_len: int = 16, n_domains: int = 2) -> pa.Table:
    """Learnable task: label = [candidate category occurs in the history], inverted in odd domains."""
    rows = random_rows(n, seed=seed, max_len=max_len, min_len=4, n_domains=n_domains)
    rng = np.random.default_rng(seed + 7)
    hist = rows.column("seq_category").to_pylist()
    dom = rows.column("domain").to_numpy()
    # half the candidates are drawn from the history so both labels are common
    from_hist = rng.random(n) < 0.5
    cats = np.array([rng.choice(h) if f else rng.integers(0, 20) for h, f in zip(hist, from_hist)])
    label = np.array([c in set(h) for c, h in zip(cats, hist)]) ^ (dom % 2 == 1)
    rows = with_candidate(rows, rows.column("item_id").to_numpy(), cats)
    return rows.set_column(rows.schema.get_field_index("label"), "label", pa.array(label.astype(np.int8), pa.int8()))


def train_losses(model: torch.nn.Module, rows: pa.Table, steps: int = 120, batch_size: int = 64, lr: float = 1e-2,
                 seed: int = 0) -> list[float]:
    """Plain Adam on BCE (+ the model's aux loss); returns the per-step total loss."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    rng = np.random.default_rng(seed)
    losses = []
    for _ in range(steps):
        idx = rng.choice(rows.num_rows, batch_size, replace=False)
        batch: RankingBatch = build_batch(rows.take(idx), SPEC)
        logits, aux = model(batch, return_aux=True)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch.labels) + aux
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    return losses


def own_candidate_scorer(model: torch.nn.Module, e):
    """A function EmbeddedBatch -> logits [B, 1] scoring e's own candidates through `_score`, with the cross features
    recomputed from the (possibly edited) history ids it is given."""
    cat_ids = e.cand_category_ids.unsqueeze(1)
    cand = (e.cand["item_id"].unsqueeze(1), e.cand["item_category"].unsqueeze(1), cat_ids)

    def score(x):
        return model._score(model.encode(x), *cand, model.embedder.cross_features(x.seq_category_ids, x.mask, cat_ids))

    return score


def padding_is_inert(model: torch.nn.Module, rows: pa.Table) -> bool:
    """Scores are bit-identical when every padded history position holds noise (and absurd time gaps), while
    changing a real position does change them (so the check can fail).

    For models exposing `embedder`, `encode(EmbeddedBatch)` and `_score(state, item, category, category_ids, cross)`."""
    model.eval()
    with torch.no_grad():
        e = model.embedder(build_batch(rows, SPEC))
        score = own_candidate_scorer(model, e)
        ref = score(e)
        pad = ~e.mask
        assert pad.any(), "rows must contain padding for this check to mean anything"
        g = torch.Generator().manual_seed(0)
        for k, v in e.seq.items():
            e.seq[k] = torch.where(pad.unsqueeze(-1), torch.randn(v.shape, generator=g) * 100, v)
        e.time_gap = torch.where(pad, torch.full_like(e.time_gap, 1e9), e.time_gap)
        # padded category ids equal to each row's candidate category: a match there would move the scores
        e.seq_category_ids = torch.where(pad, e.cand_category_ids.unsqueeze(1), e.seq_category_ids)
        out = score(e)
        e.seq["seq_item_id"] = torch.where(e.mask.unsqueeze(-1), e.seq["seq_item_id"] + 1, e.seq["seq_item_id"])
        changed = score(e)
    return torch.equal(ref, out) and not torch.equal(ref, changed)


def side_info_effect(model: torch.nn.Module, rows: pa.Table) -> tuple[float, float]:
    """Max |logit change| when only the time gaps of the real history events change (x 37, + 5 s), and when only
    their positions change (each history reversed, every item keeping its own time gap). Same interface as
    `padding_is_inert`. A model that ignores gaps / order gives ~0 (float summation order only)."""
    import dataclasses

    model.eval()
    with torch.no_grad():
        e = model.embedder(build_batch(rows, SPEC))
        score = own_candidate_scorer(model, e)
        ref = score(e)
        gaps = dataclasses.replace(e, time_gap=torch.where(e.mask, e.time_gap * 37 + 5, e.time_gap))
        d_gap = (score(gaps) - ref).abs().max().item()
        j = torch.arange(e.mask.shape[1]).unsqueeze(0)
        idx = torch.where(e.mask, e.lengths.unsqueeze(1) - 1 - j, j)  # real part reversed, padding in place
        rev = dataclasses.replace(
            e,
            seq={k: v.gather(1, idx.unsqueeze(-1).expand_as(v)) for k, v in e.seq.items()},
            time_gap=e.time_gap.gather(1, idx),
        )
        d_pos = (score(rev) - ref).abs().max().item()
    return d_gap, d_pos


def assert_learns_rule(model: torch.nn.Module, steps: int = 80) -> None:
    """Mini-batch training on 1024 rule rows cuts the mean loss of the last 10 steps below 0.75x the first 10."""
    losses = train_losses(model, rule_rows(1024, seed=0), steps=steps)
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    assert last < 0.75 * first, (first, last)


def randomize_attention_biases(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every recency / category-match bias random values (they start at zero, which would hide a bias applied
    on one path only), so the equivalence tests exercise them."""
    from recsys.layers.match_bias import CategoryMatchBias
    from recsys.layers.recency_bias import RecencyBias

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, (RecencyBias, CategoryMatchBias)):
                for p in mod.parameters():
                    p.copy_(torch.randn(p.shape, generator=g) * 2)
    return model
