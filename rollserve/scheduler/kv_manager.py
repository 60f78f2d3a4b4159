"""Which KV slots each request holds, and their hand-over to and from the radix tree.

Invariant: a running request's slots are req_to_token[row, :kv_len]. The first
`tree_len` of them belong to the radix tree and are locked through `last_node`;
the rest are the request's own and go back to the allocator (or into the tree)
when it finishes or is retracted.

A request retracted under memory pressure leaves its computed KV in the tree. While it
waits, the node its tokens end at may stay locked for it (`queued_locks`) so that
nothing evicts them before it returns; those locks give way first when running
requests need the room.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional

import torch

from rollserve.executor.kv_pool import ReqToTokenPool, SlotAllocator
from rollserve.executor.routed_experts import encode_routed_experts
from rollserve.scheduler.radix_cache import RadixCache, TreeNode
from rollserve.scheduler.request import Req


class KVManager:
    def __init__(self, allocator: SlotAllocator, req_pool: ReqToTokenPool, use_radix_cache: bool,
                 routed_experts=None):
        self.allocator = allocator
        self.req_pool = req_pool
        # executor/routed_experts.py's per-slot rows (--enable-return-routed-experts), else None
        self.routed_experts = routed_experts
        self.tree: Optional[RadixCache] = RadixCache(allocator) if use_radix_cache else None
        self.queued_locks: Dict[Req, TreeNode] = {}  # retracted, waiting request -> its lock
        self.recomputed_tokens = 0  # tokens computed again after a retraction lost them
        self.epoch = 0  # weight epoch: +1 on every weight write (scheduler/weight_versions.py)

    def new_weight_epoch(self) -> None:
        """The weights changed: KV computed so far is never matched again (it stays cached
        under its own epoch until evicted or dropped by drop_stale)."""
        self.epoch += 1
        if self.tree is not None:
            self.unlock_queued()  # what retracted requests kept is of the old weights now
            self.tree.set_epoch(self.epoch)

    def drop_stale(self) -> int:
        """Free now the cached KV of older weights that no request holds."""
        return self.tree.drop_other_epochs() if self.tree is not None else 0

    # ---- capacity -------------------------------------------------------------
    def available_slots(self) -> int:
        """Slots free now or freeable by evicting unlocked tree nodes."""
        evictable = self.tree.evictable_size() if self.tree else 0
        return self.allocator.available() + evictable

    def alloc_slots(self, n: int) -> Optional[torch.Tensor]:
        short = n - self.allocator.available()
        if short > 0 and self.tree is not None:
            self.tree.evict(short)
        return self.allocator.alloc(n)

    def used_slots(self) -> int:
        return self.allocator.num_slots - self.allocator.available()

    # ---- request life cycle -----------------------------------------------------
    def admit(self, req: Req) -> bool:
        """Give the request a row and reuse its longest cached prefix. False if no row."""
        row = self.req_pool.alloc()
        if row is None:
            return False
        req.req_pool_idx = row
        req.kv_len = req.tree_len = 0
        req.last_node = None
        req.kv_epoch = self.epoch  # its KV, matched or computed from here on, is this epoch's
        if self.tree is not None:
            match = self.tree.match_prefix(self._matchable(req))
            n = len(match.slots)
            if n:
                self.req_pool.write(row, 0, match.slots)
            self.tree.inc_lock_ref(match.last_node)
            req.last_node, req.kv_len, req.tree_len = match.last_node, n, n
            # cached_tokens counts prompt tokens (SGLang's meta_info), not a retracted
            # request's own output found again
            req.cached_tokens = max(req.cached_tokens, min(n, len(req.input_ids)))
        return True

    def admitted(self, req: Req) -> None:
        """The admitted request's first prefill chunk is in the batch: a retracted request
        no longer needs its queued lock, and what the cache did not give back is redone."""
        self.forget_queued(req)
        self.recomputed_tokens += max(0, req.retracted_computed - req.tree_len)  # tree_len: the match
        req.retracted_computed = 0

    def append_slots(self, req: Req, slots: torch.Tensor) -> None:
        self.req_pool.write(req.req_pool_idx, req.kv_len, slots)
        req.kv_len += slots.numel()

    def append_one_slot_each(self, reqs: List[Req], slots: torch.Tensor) -> None:
        """append_slots(reqs[i], slots[i:i+1]) for every i, in one table write (decode steps)."""
        self.req_pool.write_each([r.req_pool_idx for r in reqs], [r.kv_len for r in reqs], slots)
        for req in reqs:
            req.kv_len += 1

    def cache_unfinished(self, req: Req) -> None:
        """After a prefill chunk: share the computed prefix through the tree."""
        if self.tree is not None:
            self._insert_and_relock(req, relock=True)

    def release(self, req: Req) -> None:
        """The request is done (finished or aborted): keep its KV in the tree, free the rest."""
        if req.req_pool_idx is None:
            return
        if req.return_routed_experts and self.routed_experts is not None:
            # read while the slots are still the request's: tokens [start, kv_len), where kv_len
            # is seq_len - 1 for a finished generation (its last token is never forwarded)
            slots = self.req_pool.slots(req.req_pool_idx, req.kv_len)[req.routed_experts_start_len:]
            req.routed_experts = encode_routed_experts(self.routed_experts.gather(slots))
        if self.tree is not None:
            self._insert_and_relock(req, relock=False)
        else:
            self.allocator.free(self.req_pool.slots(req.req_pool_idx, req.kv_len))
        self._drop_row(req)

    def retract(self, req: Req) -> None:
        """Give back everything the request holds; it will be prefilled again later."""
        own = self.req_pool.slots(req.req_pool_idx, req.kv_len)[req.tree_len:]
        self.allocator.free(own)
        if self.tree is not None and req.last_node is not None:
            self.tree.dec_lock_ref(req.last_node)
        self._drop_row(req)

    def retract_to_cache(self, req: Req) -> None:
        """Retract under memory pressure: the request's computed KV goes into the tree
        (evictable) so that re-admission finds what was not evicted meanwhile."""
        req.retracted_computed = req.kv_len
        req.num_retractions += 1
        if self.tree is None:
            self.retract(req)
            return
        self._insert_and_relock(req, relock=False)
        self._drop_row(req)

    def lock_queued(self, reqs: Iterable[Req], spare: int) -> int:
        """Lock retracted requests' cached KV while they wait, in the given order, as long as
        `spare` slots stay available for the running requests. Returns how many got a lock."""
        locked = 0
        for req in reqs:
            if self.tree is None or req in self.queued_locks:
                continue
            node = self.tree.match_prefix(req.radix_key[:req.retracted_computed]).last_node
            self.tree.inc_lock_ref(node)
            if self.available_slots() < spare:
                self.tree.dec_lock_ref(node)
                break
            self.queued_locks[req] = node
            locked += 1
        return locked

    def unlock_queued(self) -> int:
        """Running requests need the room: retracted requests' KV becomes evictable."""
        n = len(self.queued_locks)
        for node in self.queued_locks.values():
            self.tree.dec_lock_ref(node)
        self.queued_locks.clear()
        return n

    def forget_queued(self, req: Req) -> None:
        """The waiting request was admitted or aborted: drop its queued lock."""
        node = self.queued_locks.pop(req, None)
        if node is not None:
            self.tree.dec_lock_ref(node)

    def flush(self) -> None:
        if self.tree is not None:
            self.unlock_queued()
            self.tree.reset()

    # ---- helpers ----------------------------------------------------------------
    @staticmethod
    def _matchable(req: Req):
        """Prefix that may come from the cache: at least one token must be computed
        (its logits give the next token), and prompt positions whose logprobs were
        asked for must be computed too."""
        fill = req.radix_key
        limit = len(fill) - 1
        if req.wants_input_logprobs:
            limit = min(limit, max(0, req.logprob_start_len - 1))
        return fill[:max(0, limit)]

    def _insert_and_relock(self, req: Req, relock: bool) -> None:
        key = req.radix_key[:req.kv_len]
        own = self.req_pool.slots(req.req_pool_idx, req.kv_len)
        # under the epoch of its oldest KV: KV kept across an update is never matched later
        self.tree.insert(key, own.clone(), req.kv_epoch)
        match = self.tree.match_prefix(key, req.kv_epoch)
        tree_slots = match.slots
        # Where the tree already held these tokens under other slots, ours are duplicates.
        duplicate = own[: len(tree_slots)] != tree_slots
        self.allocator.free(own[: len(tree_slots)][duplicate])
        if relock:
            self.req_pool.write(req.req_pool_idx, 0, tree_slots)
            self.tree.inc_lock_ref(match.last_node)
        if req.last_node is not None:
            self.tree.dec_lock_ref(req.last_node)
        req.last_node = match.last_node if relock else None
        req.tree_len = len(tree_slots) if relock else 0

    def _drop_row(self, req: Req) -> None:
        self.req_pool.free(req.req_pool_idx)
        req.req_pool_idx = None
        req.kv_len = req.tree_len = 0
        req.last_node = None
