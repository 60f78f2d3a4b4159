"""In which order the scheduler considers the waiting requests.

fcfs: arrival order. lpm: longest cached prefix first. dfs-weight: walk the radix
tree depth first, heaviest subtree first (a node's weight: how many waiting requests
matched into its subtree), so requests sharing a prefix run together.
random: shuffled. Without a radix cache lpm and dfs-weight are fcfs.
Whatever the policy, requests retracted under memory pressure come back first (in
queue order): they already waited, and their KV may still be in the cache.
Only `req.input_ids` and `req.num_retractions` are read.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Dict, Optional

from rollserve.scheduler.config import SCHEDULE_POLICIES
from rollserve.scheduler.radix_cache import RadixCache, TreeNode

# Above this many waiting requests lpm costs a prefix match each per step; use fcfs.
LPM_MAX_QUEUE = 128


class SchedulePolicy:
    def __init__(self, policy: str, tree_cache: Optional[RadixCache], rng: Optional[random.Random] = None):
        if policy not in SCHEDULE_POLICIES:
            raise ValueError(f"schedule policy must be one of {SCHEDULE_POLICIES}, got {policy!r}")
        self.policy = policy
        self.tree_cache = tree_cache
        self.rng = rng or random.Random()

    def order(self, waiting: list) -> list:
        retracted = [r for r in waiting if r.num_retractions]
        if not retracted:
            return self._order(waiting)
        return retracted + self._order([r for r in waiting if not r.num_retractions])

    def _order(self, waiting: list) -> list:
        policy = self._effective_policy(len(waiting))
        if policy == "lpm":
            return self._longest_prefix_first(waiting)
        if policy == "dfs-weight":
            return self._dfs_weight(waiting)
        if policy == "random":
            shuffled = list(waiting)
            self.rng.shuffle(shuffled)
            return shuffled
        return list(waiting)

    def _effective_policy(self, queue_len: int) -> str:
        if self.policy in ("lpm", "dfs-weight") and self.tree_cache is None:
            return "fcfs"
        if self.policy == "lpm" and queue_len > LPM_MAX_QUEUE:
            return "fcfs"
        return self.policy

    def _longest_prefix_first(self, waiting: list) -> list:
        cached = [len(self.tree_cache.match_prefix(req.input_ids).slots) for req in waiting]
        order = sorted(range(len(waiting)), key=lambda i: -cached[i])  # stable: ties keep arrival order
        return [waiting[i] for i in order]

    def _dfs_weight(self, waiting: list) -> list:
        reqs_at, weight, first_arrival = self._group_by_match(waiting)
        # Post-order: a node's subtrees (longer matches) before its own requests,
        # heaviest subtree first; requests with no cached prefix come last.
        ordered, stack = [], [(self.tree_cache.root, False)]
        while stack:
            node, children_done = stack.pop()
            if children_done:
                ordered.extend(reqs_at.get(node, ()))
                continue
            stack.append((node, True))
            kids = [c for c in node.children.values() if c in weight]
            kids.sort(key=lambda c: (-weight[c], first_arrival[c]))
            stack.extend((c, False) for c in reversed(kids))
        return ordered

    def _group_by_match(self, waiting: list):
        """Requests by the node their match ended at; per node, how many requests
        matched into its subtree (weight) and the earliest of them (tie-break)."""
        # Match everything first: a later match may split a node, but the node an
        # earlier match returned stays the deepest one of its prefix.
        last_nodes = [self.tree_cache.match_prefix(req.input_ids).last_node for req in waiting]
        reqs_at: Dict[TreeNode, list] = defaultdict(list)
        weight: Dict[TreeNode, int] = defaultdict(int)
        first_arrival: Dict[TreeNode, int] = {}
        for i, (req, node) in enumerate(zip(waiting, last_nodes)):
            reqs_at[node].append(req)
            while node is not None:
                weight[node] += 1
                first_arrival.setdefault(node, i)
                node = node.parent
        return reqs_at, weight, first_arrival
