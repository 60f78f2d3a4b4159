"""KVManager's retraction into the radix cache and the locks queued requests hold, on a
real allocator, request table and radix tree (no model: only slot bookkeeping)."""

from rollserve.core.sampling_params import SamplingParams
from rollserve.executor.kv_pool import ReqToTokenPool, SlotAllocator
from rollserve.scheduler.kv_manager import KVManager
from rollserve.scheduler.request import Req

POOL = 64


def running_request(kv: KVManager, rid: str, prompt, generated) -> Req:
    """A request admitted, prefilled (its prompt shared through the tree, as the scheduler
    does) and decoded: KV for all but its newest token."""
    req = Req(rid=rid, input_ids=list(prompt), sampling_params=SamplingParams(max_new_tokens=50))
    assert kv.admit(req)
    kv.append_slots(req, kv.alloc_slots(len(req.input_ids)))
    kv.cache_unfinished(req)
    req.output_ids = list(generated)
    kv.append_slots(req, kv.alloc_slots(req.seq_len - 1 - req.kv_len))
    kv.admitted(req)
    return req


def test_retracted_kv_stays_cached_and_locked_while_memory_allows():
    kv = KVManager(SlotAllocator(POOL), ReqToTokenPool(4, POOL, "cpu"), use_radix_cache=True)
    req = running_request(kv, "a", range(10, 30), range(100, 110))  # 29 slots computed
    kv.retract_to_cache(req)
    assert req.req_pool_idx is None and req.num_retractions == 1
    assert kv.available_slots() == POOL  # in the tree, evictable
    assert kv.lock_queued([req], spare=POOL - 29) == 1
    assert kv.tree.protected_size() == 29 and kv.available_slots() == POOL - 29
    kv.alloc_slots(POOL - 29)  # nothing locked is evicted for others
    assert kv.tree.total_size() == 29
    # re-admitted: all it had computed comes back from the cache, nothing is recomputed
    assert kv.admit(req) and req.kv_len == 29
    kv.admitted(req)
    assert kv.recomputed_tokens == 0 and not kv.queued_locks
    kv.release(req)
    assert kv.tree.protected_size() == 0


def test_queued_locks_give_way_and_evicted_tokens_are_counted():
    kv = KVManager(SlotAllocator(POOL), ReqToTokenPool(4, POOL, "cpu"), use_radix_cache=True)
    req = running_request(kv, "a", range(10, 30), range(100, 110))
    kv.retract_to_cache(req)
    assert kv.lock_queued([req], spare=POOL) == 0  # would leave less than `spare`: no lock
    kv.lock_queued([req], spare=0)
    assert kv.unlock_queued() == 1 and kv.tree.protected_size() == 0
    kv.alloc_slots(POOL - 29 + 9)  # evicts the leaf: its 9 decoded tokens; the prompt stays
    assert kv.admit(req) and req.kv_len == 20
    kv.admitted(req)
    assert kv.recomputed_tokens == 9


def test_flush_drops_queued_locks():
    kv = KVManager(SlotAllocator(POOL), ReqToTokenPool(4, POOL, "cpu"), use_radix_cache=True)
    req = running_request(kv, "a", range(10, 20), range(100, 104))
    kv.retract_to_cache(req)
    kv.lock_queued([req], spare=0)
    kv.flush()  # e.g. new weights: nothing cached may be reused, locked or not
    assert not kv.queued_locks and kv.allocator.available() == POOL
    assert kv.admit(req) and req.kv_len == 0
