"""The KV pool's token count from its byte budget: with a draft model the target's pool, the
draft's one-layer pool (a slot per target slot and the scratch slots) fit the same budget."""

import pytest

from rollserve.executor.kv_budget import kv_pool_tokens


def test_without_a_draft_the_budget_divides_by_the_targets_bytes():
    assert kv_pool_tokens(10_000, 100) == 100
    assert kv_pool_tokens(10_099, 100) == 100
    assert kv_pool_tokens(-5, 100) == 0


@pytest.mark.parametrize("budget,target,draft,scratch", [
    (1_000_000, 4096, 128, 0), (1_000_000, 4096, 128, 3 * 256), (2**33, 294_912, 9216, 3072),
    (50_000, 1000, 500, 10)])
def test_the_draft_pool_comes_out_of_the_same_budget(budget, target, draft, scratch):
    tokens = kv_pool_tokens(budget, target, draft, scratch)
    assert tokens < kv_pool_tokens(budget, target)  # fewer tokens with a draft model on
    used = tokens * target + (tokens + scratch) * draft
    assert used <= budget < used + target + draft  # the largest count that fits


def test_no_room_for_the_scratch_slots_is_no_tokens():
    assert kv_pool_tokens(1000, 100, 50, 100) == 0


def test_nonsense_sizes_are_refused():
    with pytest.raises(ValueError):
        kv_pool_tokens(1000, 0)
    with pytest.raises(ValueError):
        kv_pool_tokens(1000, 10, -1)


def test_scratch_slots_cover_a_tree_frontier():
    """A tree's frontier takes topk scratch slots per draft step past the first, whatever the
    node count: the pool sized for it must hold them (scheduler/tree_drafter.py uses them)."""
    from rollserve.executor.draft_runner import scratch_slots_per_row

    assert scratch_slots_per_row(3) == 2  # a chain of 3 drafts
    assert scratch_slots_per_row(3, topk=4, num_steps=3) == 8  # fewer nodes than the frontier
    assert scratch_slots_per_row(12, topk=4, num_steps=3) == 8
