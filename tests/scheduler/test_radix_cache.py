"""RadixCache: unit cases, then a stateful property test of slot ownership."""

import pytest
import torch
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from rollserve.executor.kv_pool import SlotAllocator
from rollserve.scheduler.radix_cache import RadixCache


def fresh(num_slots=64):
    alloc = SlotAllocator(num_slots)
    return alloc, RadixCache(alloc)


def put(tree, alloc, key):
    """Insert key with newly allocated slots, freeing the duplicates as a caller must."""
    slots = alloc.alloc(len(key))
    already = tree.insert(key, slots)
    alloc.free(slots[:already])
    return slots, already


def tree_map(tree):
    """prefix tuple -> slot of its last token, for everything the tree holds."""
    out, stack = {}, [(tree.root, ())]
    while stack:
        node, prefix = stack.pop()
        for child in node.children.values():
            path = prefix
            for tok, slot in zip(child.key, child.value.tolist()):
                path = path + (tok,)
                out[path] = slot
            stack.append((child, path))
    return out


# ---- unit cases ------------------------------------------------------------------
def test_empty_tree_matches_nothing():
    _, tree = fresh()
    m = tree.match_prefix([1, 2, 3])
    assert m.slots.dtype == torch.int64 and m.slots.numel() == 0
    assert m.last_node is tree.root
    assert tree.total_size() == 0


def test_shared_prefix_reuses_slots():
    alloc, tree = fresh()
    a, dup_a = put(tree, alloc, [1, 2, 3, 4])
    b, dup_b = put(tree, alloc, [1, 2, 5])
    assert (dup_a, dup_b) == (0, 2)
    assert tree.total_size() == 5  # 1 2 3 4 and 5
    assert tree.match_prefix([1, 2, 3, 4, 9]).slots.tolist() == a.tolist()
    assert tree.match_prefix([1, 2, 5]).slots.tolist() == a[:2].tolist() + b[2:].tolist()
    assert alloc.available() == 64 - 5


def test_match_inside_node_splits_it():
    alloc, tree = fresh()
    slots, _ = put(tree, alloc, [7, 8, 9, 10])
    m = tree.match_prefix([7, 8, 42])
    assert m.slots.tolist() == slots[:2].tolist()
    assert m.last_node.key == [7, 8]
    tail = m.last_node.children[9]
    assert tail.key == [9, 10] and tail.value.tolist() == slots[2:].tolist()
    assert tail.parent is m.last_node and m.last_node.parent is tree.root
    assert tree.total_size() == 4 and tree.evictable_size() == 4


def test_insert_returns_count_already_cached_and_keeps_tree_slots():
    alloc, tree = fresh()
    first, _ = put(tree, alloc, [1, 2, 3])
    second = alloc.alloc(5)
    assert tree.insert([1, 2, 3, 4, 5], second) == 3
    # the tree kept its own slots for 1 2 3 and took ours only for 4 5
    assert tree.match_prefix([1, 2, 3, 4, 5]).slots.tolist() == first.tolist() + second[3:].tolist()
    assert tree.insert([1, 2], alloc.alloc(2)) == 2  # shorter than the node: split, all duplicate
    assert tree.insert([], torch.empty(0, dtype=torch.int64)) == 0


def test_insert_rejects_length_mismatch():
    _, tree = fresh()
    with pytest.raises(ValueError):
        tree.insert([1, 2, 3], torch.tensor([1, 2], dtype=torch.int64))


def test_lock_protects_node_and_ancestors():
    alloc, tree = fresh()
    put(tree, alloc, [1, 2, 3, 4])
    put(tree, alloc, [1, 2, 5, 6])
    node = tree.match_prefix([1, 2, 3, 4]).last_node
    tree.inc_lock_ref(node)
    assert tree.protected_size() == 4 and tree.evictable_size() == 2
    tree.inc_lock_ref(node)  # second reference: counters unchanged
    assert tree.protected_size() == 4
    assert tree.evict(100) == 2  # only the unlocked branch 5 6 can go
    assert tree.match_prefix([1, 2, 3, 4]).slots.numel() == 4
    tree.dec_lock_ref(node)
    assert tree.protected_size() == 4
    tree.dec_lock_ref(node)
    assert tree.protected_size() == 0 and tree.evictable_size() == 4
    with pytest.raises(RuntimeError):
        tree.dec_lock_ref(node)


def test_split_of_locked_node_keeps_lock_on_both_halves():
    alloc, tree = fresh()
    put(tree, alloc, [1, 2, 3, 4])
    node = tree.match_prefix([1, 2, 3, 4]).last_node
    tree.inc_lock_ref(node)
    upper = tree.match_prefix([1, 2]).last_node
    assert upper is not node and node.parent is upper
    assert upper.lock_ref == node.lock_ref == 1
    tree.dec_lock_ref(node)  # the request's reference still releases the whole path
    assert upper.lock_ref == 0 and tree.protected_size() == 0 and tree.evictable_size() == 4


def test_evict_least_recently_used_first():
    alloc, tree = fresh()
    a, _ = put(tree, alloc, [1, 1])
    b, _ = put(tree, alloc, [2, 2])
    c, _ = put(tree, alloc, [3, 3])
    tree.match_prefix([1, 1])  # a is now the most recent
    assert tree.evict(1) == 2  # a whole leaf goes: b, the oldest
    assert tree.match_prefix([2, 2]).slots.numel() == 0
    assert tree.evict(2) == 2  # then c
    assert tree.match_prefix([3, 3]).slots.numel() == 0
    assert tree.match_prefix([1, 1]).slots.tolist() == a.tolist()
    assert sorted(alloc.free_slots.tolist()[-4:]) == sorted(b.tolist() + c.tolist())


def test_evict_reaches_parent_after_its_last_child():
    alloc, tree = fresh()
    put(tree, alloc, [1, 2, 3])
    put(tree, alloc, [1, 2, 4])  # [1 2] with children [3] and [4]
    put(tree, alloc, [9])
    tree.match_prefix([9])  # [9] newest; the [1 2] branch goes first
    assert tree.evict(4) == 4
    assert tree.match_prefix([1]).slots.numel() == 0
    assert tree.match_prefix([9]).slots.numel() == 1
    assert tree.evict(100) == 1 and tree.total_size() == 0
    assert alloc.available() == 64


def test_reset_frees_everything():
    alloc, tree = fresh()
    put(tree, alloc, [1, 2, 3])
    put(tree, alloc, [1, 5])
    node = tree.match_prefix([1, 5]).last_node
    tree.inc_lock_ref(node)
    with pytest.raises(RuntimeError):
        tree.reset()  # a request still holds cached tokens
    tree.dec_lock_ref(node)
    tree.reset()
    assert tree.total_size() == 0 and not tree.root.children
    assert sorted(alloc.free_slots.tolist()) == list(range(1, 65))


def test_prefix_of_other_weights_is_never_matched_and_is_dropped():
    alloc, tree = fresh()
    put(tree, alloc, [1, 2, 3, 4])
    locked = tree.match_prefix([1, 2]).last_node
    tree.inc_lock_ref(locked)  # a request kept its KV across the update (in_place)
    tree.set_epoch(1)
    assert tree.match_prefix([1, 2, 3, 4]).slots.numel() == 0
    slots, already = put(tree, alloc, [1, 2, 3, 4])  # the new weights' own KV
    assert already == 0
    assert tree.match_prefix([1, 2, 3, 4]).slots.tolist() == slots.tolist()
    # the old epoch's KV is still reachable under its own epoch (the request inserting it)
    assert tree.match_prefix([1, 2, 3, 4], epoch=0).slots.numel() == 4
    assert tree.total_size() == 8
    assert tree.drop_other_epochs() == 2  # [3, 4] of epoch 0; [1, 2] is locked
    assert tree.match_prefix([1, 2, 3], epoch=0).slots.numel() == 2
    tree.dec_lock_ref(locked)
    assert tree.evict(64) == 6 and alloc.available() == 64


# ---- property test: ownership of every slot ------------------------------------
keys = st.lists(st.integers(0, 3), min_size=1, max_size=10)
NUM_SLOTS = 40


class Req:
    def __init__(self, key, tree_slots, own, node):
        self.key, self.tree_slots, self.own, self.node = key, tree_slots, own, node


class RadixOwnership(RuleBasedStateMachine):
    """Requests match, lock, allocate their own slots, then insert (finish) or give
    back (abort), as the scheduler's KV manager does; eviction and reset interleave."""

    def __init__(self):
        super().__init__()
        self.alloc = SlotAllocator(NUM_SLOTS)
        self.tree = RadixCache(self.alloc)
        self.model = {}  # prefix tuple -> slot, what the tree must hold
        self.reqs = []

    def _model_match(self, key):
        slots = []
        for i in range(1, len(key) + 1):
            if tuple(key[:i]) not in self.model:
                break
            slots.append(self.model[tuple(key[:i])])
        return slots

    def _alloc(self, n):
        short = n - self.alloc.available()
        if short > 0:
            self._evict(short)
        return self.alloc.alloc(n)

    def _evict(self, n):
        before = dict(self.model)
        evictable = self.tree.evictable_size()
        freed = self.tree.evict(n)
        after = tree_map(self.tree)
        assert all(before[p] == s for p, s in after.items())  # eviction only removes
        assert freed == len(before) - len(after) <= evictable
        assert freed >= n or self.tree.evictable_size() == 0
        self.model = after
        return freed

    def _insert(self, key, slots):
        """Cache key -> slots; return the request-owned slots the tree did not take."""
        expected = len(self._model_match(key))
        already = self.tree.insert(key, slots)
        assert already == expected
        for i in range(already, len(key)):
            self.model[tuple(key[: i + 1])] = int(slots[i])
        return slots[:already]

    @rule(key=keys)
    def insert_fresh(self, key):
        slots = self._alloc(len(key))
        if slots is not None:
            self.alloc.free(self._insert(key, slots))

    @rule(key=keys)
    def match(self, key):
        m = self.tree.match_prefix(key)
        assert m.slots.tolist() == self._model_match(key)
        assert m.slots.dtype == torch.int64

    @rule(key=keys)
    def start_request(self, key):
        m = self.tree.match_prefix(key)
        assert m.slots.tolist() == self._model_match(key)
        self.tree.inc_lock_ref(m.last_node)
        own = self._alloc(len(key) - m.slots.numel())
        if own is None:
            self.tree.dec_lock_ref(m.last_node)
            return
        self.reqs.append(Req(key, m.slots, own, m.last_node))

    @precondition(lambda self: self.reqs)
    @rule(pick=st.integers(0, 1000))
    def finish_request(self, pick):
        req = self.reqs.pop(pick % len(self.reqs))
        matched = req.tree_slots.numel()
        duplicates = self._insert(req.key, torch.cat([req.tree_slots, req.own]))
        assert duplicates[:matched].tolist() == req.tree_slots.tolist()  # locked: still the tree's
        self.alloc.free(duplicates[matched:])
        self.tree.dec_lock_ref(req.node)

    @precondition(lambda self: self.reqs)
    @rule(pick=st.integers(0, 1000))
    def abort_request(self, pick):
        req = self.reqs.pop(pick % len(self.reqs))
        self.alloc.free(req.own)
        self.tree.dec_lock_ref(req.node)

    @rule(n=st.integers(0, NUM_SLOTS))
    def evict(self, n):
        self._evict(n)

    @precondition(lambda self: not self.reqs)
    @rule()
    def reset(self):
        self.tree.reset()
        self.model = {}
        assert self.alloc.available() == NUM_SLOTS

    @invariant()
    def every_slot_has_exactly_one_owner(self):
        free = self.alloc.free_slots.tolist()
        in_tree = [s for n in self.tree.iter_nodes() for s in n.value.tolist()]
        held = [s for r in self.reqs for s in r.own.tolist()]
        everything = free + in_tree + held
        assert len(everything) == len(set(everything)) == NUM_SLOTS  # no leak, no double free
        assert set(everything) == set(range(1, NUM_SLOTS + 1))

    @invariant()
    def tree_holds_what_was_inserted(self):
        assert tree_map(self.tree) == self.model
        for r in self.reqs:  # locked prefixes were never evicted
            assert self.tree.match_prefix(r.key[: r.tree_slots.numel()]).slots.tolist() == r.tree_slots.tolist()

    @invariant()
    def sizes_and_locks_are_exact(self):
        nodes = list(self.tree.iter_nodes())
        protected = sum(len(n.key) for n in nodes if n.lock_ref > 0)
        assert self.tree.protected_size() == protected
        assert self.tree.evictable_size() + protected == self.tree.total_size() == len(self.model)
        for n in nodes:
            assert n.key and len(n.key) == n.value.numel()
            assert n.parent.children[n.key[0]] is n
            assert n.lock_ref == sum(self._holds(r, n) for r in self.reqs)

    def _holds(self, req, node):
        """Does req's lock run through node (node is its last_node or an ancestor)?"""
        walk = req.node
        while walk is not None:
            if walk is node:
                return True
            walk = walk.parent
        return False


RadixOwnership.TestCase.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
TestRadixOwnership = RadixOwnership.TestCase
