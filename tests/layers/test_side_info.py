"""positions_from_newest on the embedder's left-aligned layout (oldest first, newest at length-1)."""
from __future__ import annotations

import torch

from recsys.layers.side_info import SequenceSideInfo, positions_from_newest


def test_positions_count_from_the_newest_event():
    pos = positions_from_newest(torch.tensor([3, 0, 5]), 5)
    assert torch.equal(pos, torch.tensor([[2, 1, 0, 0, 0], [0, 0, 0, 0, 0], [4, 3, 2, 1, 0]]))


def test_same_recency_same_position_whatever_the_length():
    """The newest event of a short and of a long history share position 0 (and so the same side info)."""
    torch.manual_seed(0)
    layer = SequenceSideInfo(4, 6, max_positions=8)
    lengths = torch.tensor([2, 5])
    L = 5
    mask = torch.arange(L).unsqueeze(0) < lengths.unsqueeze(1)
    feats = torch.ones(2, L, 4)
    gap = torch.full((2, L), 60.0)
    out = layer(feats, gap, positions_from_newest(lengths, L), mask)
    torch.testing.assert_close(out[0, 1], out[1, 4])
    assert not torch.allclose(out[1, 3], out[1, 4])
    assert torch.equal(out[0, 2:], torch.zeros(3, 6))
