"""executor/vision_dp.py's split of a prefill's images over the TP ranks (the encoding and the
all-gather themselves run in tests/executor/test_qwen2_vl_tp.py, over two gloo ranks)."""

from __future__ import annotations

from types import SimpleNamespace

from rollserve.executor.vision_dp import owners


def _items(*grids):
    return [SimpleNamespace(grid_thw=g) for g in grids]


def test_largest_images_first_each_to_the_least_loaded_rank():
    # patches 80, 20, 60, 20, 16: 80 -> rank 0; 60 -> 1; the first 20 -> 1 (80 / 80); a tie
    # goes to the lower rank: the second 20 -> 0 (100 / 80); 16 -> 1 (100 / 96)
    items = _items((1, 8, 10), (1, 4, 5), (1, 6, 10), (1, 4, 5), (1, 4, 4))
    assert owners(items, 2) == [0, 1, 1, 0, 1]
    assert owners(items, 1) == [0] * 5


def test_more_ranks_than_images_leaves_ranks_idle():
    assert owners(_items((1, 4, 4), (1, 8, 8)), 4) == [1, 0]
