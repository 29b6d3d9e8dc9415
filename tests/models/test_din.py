"""DIN's attention window: the activation unit reads only the newest `attention_len` events."""
from __future__ import annotations

import pyarrow as pa
import torch

from recsys.data.batch import build_batch
from recsys.models.din import DINConfig, DINRanker
from tests.models.ranking_rows import SPEC, random_rows


def _pair(W: int) -> tuple[DINRanker, DINRanker]:
    """The same weights with the window W and without one."""
    base = {"embedding": {"dim": 8, "category_share": [0.5, 1.0]}, "attention_hidden": [16], "hidden": [16], "history_action": True}
    torch.manual_seed(0)
    windowed = DINRanker(DINConfig.model_validate({**base, "attention_len": W}), SPEC).eval()
    whole = DINRanker(DINConfig.model_validate(base), SPEC).eval()
    whole.load_state_dict(windowed.state_dict())
    return windowed, whole


def test_window_covering_the_history_changes_nothing():
    windowed, whole = _pair(W=12)
    batch = build_batch(random_rows(16, seed=3, max_len=12), SPEC)  # every history fits the window
    with torch.no_grad():
        d = (windowed(batch) - whole(batch)).abs().max().item()
    assert d <= 1e-6, d


def test_window_hides_older_events_from_the_attention_only():
    windowed, whole = _pair(W=4)
    rows = random_rows(16, seed=3, min_len=10, max_len=24)
    batch = build_batch(rows, SPEC)
    with torch.no_grad():
        assert (windowed(batch) - whole(batch)).abs().max().item() > 1e-4  # longer histories: the window matters
        e = windowed.embedder(batch)
        s = windowed._state(e)
        assert s.hist.shape[1] == 4 and bool(s.valid.all())
        # the attended events are each row's newest 4, in order
        newest = torch.stack([e.seq["seq_item_id"][b, int(n) - 4 : int(n)] for b, n in enumerate(e.lengths)])
        assert torch.equal(s.hist[..., :8], newest)
        # the profile still pools the whole history
        assert torch.equal(s.profile, whole._state(e).profile)


def test_paper_head_sees_only_the_window():
    """profile "none" (the paper's head), no cross features: events older than the newest W cannot move a score,
    a change inside the window does."""
    cfg = {"embedding": {"dim": 8}, "attention_hidden": [16], "hidden": [16], "history_action": True,
           "attention_len": 4, "profile": "none"}
    torch.manual_seed(0)
    model = DINRanker(DINConfig.model_validate(cfg), SPEC).eval()
    rows = random_rows(16, seed=5, min_len=8, max_len=24)
    old = [[i + 1 if j < len(r) - 4 else i for j, i in enumerate(r)] for r in rows.column("seq_item_id").to_pylist()]
    new = [[i + 1 if j >= len(r) - 4 else i for j, i in enumerate(r)] for r in rows.column("seq_item_id").to_pylist()]
    col = rows.schema.get_field_index("seq_item_id")
    with torch.no_grad():
        ref = model(build_batch(rows, SPEC))
        older = model(build_batch(rows.set_column(col, "seq_item_id", pa.array(old, pa.list_(pa.int64()))), SPEC))
        newer = model(build_batch(rows.set_column(col, "seq_item_id", pa.array(new, pa.list_(pa.int64()))), SPEC))
    assert torch.equal(ref, older)
    assert (ref - newer).abs().max().item() > 1e-4
