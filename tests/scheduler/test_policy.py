"""SchedulePolicy orderings on hand-built radix trees."""

import random

import pytest

from rollserve.executor.kv_pool import SlotAllocator
from rollserve.scheduler.policy import LPM_MAX_QUEUE, SchedulePolicy
from rollserve.scheduler.radix_cache import RadixCache
from rollserve.scheduler.request import Req
from rollserve.core.sampling_params import SamplingParams


def cache_with(*keys):
    alloc = SlotAllocator(1000)
    tree = RadixCache(alloc)
    for key in keys:
        slots = alloc.alloc(len(key))
        alloc.free(slots[: tree.insert(key, slots)])
    return tree


def reqs(*prompts):
    return [Req(rid=f"r{i}", input_ids=list(p), sampling_params=SamplingParams())
            for i, p in enumerate(prompts)]


def rids(ordered):
    return [r.rid for r in ordered]


def test_unknown_policy_rejected():
    with pytest.raises(ValueError):
        SchedulePolicy("shortest-first", None)


def test_fcfs_keeps_arrival_order_and_input():
    waiting = reqs([5], [1, 2, 3], [1, 2])
    ordered = SchedulePolicy("fcfs", cache_with([1, 2, 3])).order(waiting)
    assert rids(ordered) == ["r0", "r1", "r2"]
    assert ordered is not waiting


def test_lpm_longest_cached_prefix_first_ties_in_arrival_order():
    tree = cache_with([1, 2, 3, 4, 5, 6], [7, 8])
    waiting = reqs([9, 9],                 # 0 cached
                   [7, 8, 1],              # 2
                   [1, 2, 3, 4, 0],        # 4
                   [1, 2, 3, 4, 5, 6, 7],  # 6
                   [5])                    # 0
    before = rids(waiting)
    assert rids(SchedulePolicy("lpm", tree).order(waiting)) == ["r3", "r2", "r1", "r0", "r4"]
    assert rids(waiting) == before  # the queue itself is not reordered


def test_lpm_falls_back_to_fcfs_on_long_queue():
    tree = cache_with([1, 2, 3, 4])
    prompts = [[1, 2, 3, 4][: i % 5] + [9] for i in range(LPM_MAX_QUEUE + 1)]
    policy = SchedulePolicy("lpm", tree)
    assert rids(policy.order(reqs(*prompts))) == [f"r{i}" for i in range(LPM_MAX_QUEUE + 1)]
    short = reqs(*prompts[:LPM_MAX_QUEUE])
    cached = [len(p) - 1 for p in prompts[:LPM_MAX_QUEUE]]
    assert [cached[int(r.rid[1:])] for r in policy.order(short)] == sorted(cached, reverse=True)


def test_dfs_weight_heaviest_subtree_first_deeper_before_shallower():
    tree = cache_with([1, 2, 3], [1, 2, 4], [5, 6])
    waiting = reqs([5, 6, 0],     # r0 -> [5 6]
                   [1, 2, 3, 9],  # r1 -> [1 2]/[3]
                   [8],           # r2 -> root: nothing cached
                   [1, 2, 4],     # r3 -> [1 2]/[4]
                   [1, 2, 3, 7],  # r4 -> [1 2]/[3]
                   [5, 6, 1],     # r5 -> [5 6]
                   [1, 2, 7])     # r6 -> [1 2] itself
    # [1 2] holds 4 requests (its [3] child 2, [4] child 1), [5 6] holds 2
    ordered = SchedulePolicy("dfs-weight", tree).order(waiting)
    assert rids(ordered) == ["r1", "r4", "r3", "r6", "r0", "r5", "r2"]


def test_dfs_weight_groups_interleaved_arrivals():
    tree = cache_with([1, 1, 1, 1], [2, 2, 2, 2])
    waiting = reqs([2, 2, 2, 2, 0], [1, 1, 1, 1, 0], [2, 2, 2, 2, 1], [1, 1, 1, 1, 1], [2, 2, 2, 2, 2])
    ordered = SchedulePolicy("dfs-weight", tree).order(waiting)
    assert rids(ordered) == ["r0", "r2", "r4", "r1", "r3"]


def test_dfs_weight_equal_weights_earliest_arrival_first():
    tree = cache_with([1, 1], [2, 2])
    waiting = reqs([9], [2, 2, 0], [1, 1, 0])
    assert rids(SchedulePolicy("dfs-weight", tree).order(waiting)) == ["r1", "r2", "r0"]


def test_dfs_weight_survives_split_of_an_earlier_match():
    tree = cache_with([1, 2, 3, 4])
    # r0 matches the whole node; r1's match then splits it into [1 2] + [3 4]
    waiting = reqs([1, 2, 3, 4, 9], [1, 2, 7], [5])
    assert rids(SchedulePolicy("dfs-weight", tree).order(waiting)) == ["r0", "r1", "r2"]


def test_random_is_a_seeded_permutation():
    waiting = reqs(*[[i] for i in range(10)])
    a = SchedulePolicy("random", None, rng=random.Random(3))
    b = SchedulePolicy("random", None, rng=random.Random(3))
    orders = [rids(a.order(waiting)) for _ in range(5)]
    assert orders == [rids(b.order(waiting)) for _ in range(5)]
    assert all(sorted(o) == sorted(rids(waiting)) for o in orders)
    assert len({tuple(o) for o in orders} | {tuple(rids(waiting))}) > 1


@pytest.mark.parametrize("name", ["lpm", "dfs-weight"])
def test_cache_aware_policies_without_radix_cache_are_fcfs(name):
    waiting = reqs([9], [1, 2, 3, 4], [1, 2])
    assert rids(SchedulePolicy(name, cache_with([1, 2, 3, 4])).order(waiting)) != rids(waiting)
    assert rids(SchedulePolicy(name, None).order(waiting)) == rids(waiting)


@pytest.mark.parametrize("name", ["fcfs", "lpm", "dfs-weight", "random"])
def test_every_policy_returns_a_permutation(name):
    rng = random.Random(0)
    tree = cache_with(*[[rng.randrange(3) for _ in range(rng.randint(1, 8))] for _ in range(20)])
    waiting = reqs(*[[rng.randrange(3) for _ in range(rng.randint(1, 8))] for _ in range(60)])
    ordered = SchedulePolicy(name, tree, rng=random.Random(1)).order(waiting)
    assert sorted(rids(ordered)) == sorted(rids(waiting))
    assert len({id(r) for r in ordered}) == len(waiting)
