"""How dimensions are split over ranks, and the collectives the scheduler processes use to
stay in step and to agree (two gloo ranks)."""

from __future__ import annotations

import pytest

from rollserve.executor.parallel_state import (broadcast_objects, first_failing_rank, kv_head_range,
                                               padded_share, split_evenly, tp_rank)
from tests.tp_ranks import run_on_ranks


def test_heads_split_or_replicate():
    assert split_evenly(8, 1, 4, "heads") == (2, 2)
    with pytest.raises(ValueError, match="heads \\(9\\) is not divisible by tp_size 2"):
        split_evenly(9, 0, 2, "heads")
    assert [kv_head_range(2, r, 2) for r in range(2)] == [(0, 1), (1, 1)]
    assert [kv_head_range(2, r, 4) for r in range(4)] == [(0, 1), (0, 1), (1, 1), (1, 1)]
    with pytest.raises(ValueError, match="neither a divisor nor a multiple"):
        kv_head_range(2, 0, 3)


def test_vocabulary_rows_are_padded_on_the_last_ranks():
    assert [padded_share(10, r, 4) for r in range(4)] == [(0, 3, 3), (3, 3, 3), (6, 3, 3), (9, 3, 1)]
    assert padded_share(2, 3, 4) == (2, 1, 0)  # a rank may hold padding only


def agree_and_combine(fail_on_rank: int):
    from rollserve.scheduler.tp_sync import combine_answers

    shared = broadcast_objects({"from": tp_rank()} if tp_rank() == 0 else None)
    ok = tp_rank() != fail_on_rank
    answer = {"success": ok, "message": "done" if ok else "bad shape"}
    return shared, first_failing_rank(ok), combine_answers(answer)


def test_ranks_share_rank_0s_messages_and_agree_on_failure():
    results = run_on_ranks(agree_and_combine, 2, 1)
    assert [r[0] for r in results] == [{"from": 0}, {"from": 0}]
    assert [r[1] for r in results] == [1, 1]  # every rank learns that rank 1 refused
    assert results[0][2] == {"success": False, "message": "tensor-parallel rank 1: bad shape"}
    assert results[1][2] is None  # only rank 0 answers the front end
    assert first_failing_rank(True) is None and first_failing_rank(False) == 0  # one rank
