"""Radix tree over token ids whose nodes own KV slots: the prefix cache.

Page size is 1, so node.key[i] is a token id and node.value[i] the KV slot that
holds it. A request that finds its prompt's prefix here reuses those slots and
locks the node where its match ended (and so every ancestor) against eviction.
Unlocked leaves are evicted least recently used first.

Weight epochs: KV depends on the weights that computed it, so the tree keeps one root
per weight epoch (set_epoch moves lookups to a fresh root after every weight write). A
prefix cached under other weights is never matched; it stays until evicted like any
unlocked leaf, or until drop_other_epochs frees it (flush_cache on an update).

Ownership: a slot is either in the allocator's free list, owned by the tree, or
owned by a request. `insert` copies only the slots of tokens the tree lacked; the
caller still owns (and must free) its slots for tokens that were already there.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional

import torch

from rollserve.executor.kv_pool import SlotAllocator

_clock = itertools.count()  # access times: a counter, so no two touches tie


def _empty_slots() -> torch.Tensor:
    return torch.empty(0, dtype=torch.int64)


def _common_len(a: List[int], b: List[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class TreeNode:
    __slots__ = ("children", "parent", "key", "value", "lock_ref", "last_access_time")

    def __init__(self, key: List[int], value: torch.Tensor, parent: Optional["TreeNode"]):
        self.children: Dict[int, TreeNode] = {}
        self.parent = parent
        self.key = key
        self.value = value
        self.lock_ref = 0
        self.last_access_time = next(_clock)

    def __lt__(self, other: "TreeNode") -> bool:  # heap order: least recently used first
        return self.last_access_time < other.last_access_time

    def __repr__(self) -> str:
        return f"TreeNode(key={self.key}, lock_ref={self.lock_ref})"


@dataclass
class MatchResult:
    slots: torch.Tensor  # int64 slots of the matched prefix (empty if none)
    last_node: TreeNode  # deepest node covering the match (the root if none)


class RadixCache:
    def __init__(self, allocator: SlotAllocator):
        self.allocator = allocator
        self.epoch = 0
        self._new_root()

    def _new_root(self) -> None:
        self.roots: Dict[int, TreeNode] = {}
        self._evictable = 0
        self._protected = 0

    @property
    def root(self) -> TreeNode:
        """The current epoch's root."""
        return self._root(self.epoch)

    def _root(self, epoch: Optional[int]) -> TreeNode:
        epoch = self.epoch if epoch is None else epoch
        root = self.roots.get(epoch)
        if root is None:
            root = self.roots[epoch] = TreeNode([], _empty_slots(), None)
        return root

    def set_epoch(self, epoch: int) -> None:
        """New weights: later lookups and inserts (without an explicit epoch) use a new root."""
        self.epoch = epoch
        for old in [e for e, r in self.roots.items() if e != epoch and not r.children]:
            del self.roots[old]

    def drop_other_epochs(self) -> int:
        """Free every unlocked node cached under other weights. Returns the slots freed."""
        freed = 0
        while True:
            leaves = [n for e, r in self.roots.items() if e != self.epoch
                      for n in _iter_subtree(r) if not n.children and n.lock_ref == 0]
            if not leaves:
                break
            for leaf in leaves:
                freed += self._remove_leaf(leaf)
        self.set_epoch(self.epoch)  # forgets the emptied roots
        return freed

    # ---- lookup and insertion ---------------------------------------------------
    def match_prefix(self, key: List[int], epoch: Optional[int] = None) -> MatchResult:
        """Longest prefix of key cached under `epoch` (default: the current one). A match
        ending inside a node splits it, so that last_node covers exactly the matched
        tokens (and can be locked alone)."""
        key = list(key)
        now = next(_clock)
        node, pos, pieces = self._root(epoch), 0, []
        while pos < len(key):
            child = node.children.get(key[pos])
            if child is None:
                break
            n = _common_len(child.key, key[pos:])
            if n < len(child.key):
                child = self._split(child, n)
            child.last_access_time = now
            pieces.append(child.value)
            node, pos = child, pos + n
        slots = torch.cat(pieces) if pieces else _empty_slots()
        return MatchResult(slots=slots, last_node=node)

    def insert(self, key: List[int], slots: torch.Tensor, epoch: Optional[int] = None) -> int:
        """Cache key -> slots under `epoch` (default: the current one). Returns how many leading tokens of key the tree already
        held; the caller keeps ownership of slots[:that] (the tree keeps its own)."""
        key = list(key)
        if len(key) != slots.numel():
            raise ValueError(f"key has {len(key)} tokens but {slots.numel()} slots were given")
        now = next(_clock)
        node, pos = self._root(epoch), 0
        while pos < len(key):
            child = node.children.get(key[pos])
            if child is None:
                self._add_leaf(node, key[pos:], slots[pos:])
                return pos
            n = _common_len(child.key, key[pos:])
            if n < len(child.key):
                child = self._split(child, n)
            child.last_access_time = now
            node, pos = child, pos + n
        return pos

    def _add_leaf(self, parent: TreeNode, key: List[int], slots: torch.Tensor) -> None:
        leaf = TreeNode(key, slots.to(torch.int64).cpu().clone(), parent)
        parent.children[key[0]] = leaf
        self._evictable += len(key)

    def _split(self, node: TreeNode, n: int) -> TreeNode:
        """Cut node after its first n tokens. The new upper node is returned; `node`
        keeps the tail, so requests that locked `node` still hold their full prefix."""
        upper = TreeNode(node.key[:n], node.value[:n], node.parent)
        upper.lock_ref = node.lock_ref  # same lock status: the size counters do not move
        upper.last_access_time = node.last_access_time
        upper.children = {node.key[n]: node}
        node.parent.children[node.key[0]] = upper
        node.parent, node.key, node.value = upper, node.key[n:], node.value[n:]
        return upper

    # ---- locking ----------------------------------------------------------------
    def inc_lock_ref(self, node: TreeNode) -> None:
        while node.parent is not None:  # up to its epoch's root
            if node.lock_ref == 0:
                self._evictable -= len(node.key)
                self._protected += len(node.key)
            node.lock_ref += 1
            node = node.parent

    def dec_lock_ref(self, node: TreeNode) -> None:
        while node.parent is not None:
            if node.lock_ref <= 0:
                raise RuntimeError(f"dec_lock_ref on unlocked {node!r}")
            if node.lock_ref == 1:
                self._protected -= len(node.key)
                self._evictable += len(node.key)
            node.lock_ref -= 1
            node = node.parent

    # ---- eviction ---------------------------------------------------------------
    def evict(self, num_tokens: int) -> int:
        """Free least recently used unlocked leaves until num_tokens slots are freed
        or nothing evictable is left. Returns how many slots were freed."""
        heap = [n for n in self.iter_nodes() if not n.children and n.lock_ref == 0]
        heapq.heapify(heap)
        freed = 0
        while freed < num_tokens and heap:
            leaf = heapq.heappop(heap)
            parent = leaf.parent
            freed += self._remove_leaf(leaf)
            if parent.parent is not None and not parent.children and parent.lock_ref == 0:
                heapq.heappush(heap, parent)
        return freed

    def _remove_leaf(self, leaf: TreeNode) -> int:
        del leaf.parent.children[leaf.key[0]]
        self.allocator.free(leaf.value)
        self._evictable -= len(leaf.key)
        return len(leaf.key)

    def reset(self) -> None:
        """Give every slot of the tree back to the allocator and empty the tree."""
        if self._protected:
            raise RuntimeError(f"reset while {self._protected} cached tokens are locked by requests")
        values = [n.value for n in self.iter_nodes()]
        if values:
            self.allocator.free(torch.cat(values))
        self._new_root()

    # ---- sizes and inspection ---------------------------------------------------
    def evictable_size(self) -> int:
        return self._evictable

    def protected_size(self) -> int:
        return self._protected

    def total_size(self) -> int:
        return self._evictable + self._protected

    def iter_nodes(self) -> Iterator[TreeNode]:
        """Every node but the roots (of every epoch), parents before their children."""
        for root in list(self.roots.values()):
            yield from _iter_subtree(root)


def _iter_subtree(root: TreeNode) -> Iterator[TreeNode]:
    stack = list(root.children.values())
    while stack:
        node = stack.pop()
        yield node
        stack.extend(node.children.values())
