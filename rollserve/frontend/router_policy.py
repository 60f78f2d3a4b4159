"""Which worker (data-parallel replica) a request goes to: SGLang router's policies.

* round_robin: in turn;
* shortest_queue: the worker with the fewest requests this router has in flight there;
* cache_aware: the worker whose approximate prefix tree (prefix_tree.py) holds the longest
  prefix of the request's text, when that covers at least `cache_threshold` of it; else
  the one with the least cached text (room to cache more). When load is skewed (the busiest
  worker has over `balance_abs_threshold` more requests in flight than the idlest, and
  over `balance_rel_threshold` times as many) the least loaded worker wins instead, as in
  SGLang's router. GRPO groups and multi-turn conversations thus land where their prefix is.
"""

from __future__ import annotations

import itertools
from typing import Dict, List, Optional

from rollserve.frontend.prefix_tree import PrefixTree

POLICIES = ("round_robin", "shortest_queue", "cache_aware")


class RoutingPolicy:
    def pick(self, workers: List[str], load: Dict[str, int], text: str) -> str:
        raise NotImplementedError

    def forget(self, worker: str) -> None:
        """The worker left (removed, or dead)."""


class RoundRobin(RoutingPolicy):
    def __init__(self):
        self._turn = itertools.count()

    def pick(self, workers, load, text):
        return workers[next(self._turn) % len(workers)]


class ShortestQueue(RoutingPolicy):
    def pick(self, workers, load, text):
        return min(workers, key=lambda w: load.get(w, 0))  # ties: the first listed


class CacheAware(RoutingPolicy):
    def __init__(self, cache_threshold: float = 0.5, balance_abs_threshold: int = 32,
                 balance_rel_threshold: float = 1.0001, max_tree_chars: int = 1 << 20):
        self.cache_threshold = cache_threshold
        self.balance_abs_threshold = balance_abs_threshold
        self.balance_rel_threshold = balance_rel_threshold
        self.max_tree_chars = max_tree_chars
        self.trees: Dict[str, PrefixTree] = {}
        self.hits = 0  # requests sent where their prefix was (cache_threshold met)
        self.routed = 0

    def _tree(self, worker: str) -> PrefixTree:
        if worker not in self.trees:
            self.trees[worker] = PrefixTree(self.max_tree_chars)
        return self.trees[worker]

    def pick(self, workers, load, text):
        self.routed += 1
        loads = [load.get(w, 0) for w in workers]
        if max(loads) - min(loads) > self.balance_abs_threshold and \
                max(loads) > min(loads) * self.balance_rel_threshold:
            chosen = min(workers, key=lambda w: load.get(w, 0))
        else:
            matches = {w: self._tree(w).match(text) for w in workers}
            best = max(workers, key=lambda w: matches[w])
            if text and matches[best] / len(text) >= self.cache_threshold:
                chosen = best
                self.hits += 1
            else:
                chosen = min(workers, key=lambda w: self._tree(w).size)
        self._tree(chosen).insert(text)
        return chosen

    def forget(self, worker: str) -> None:
        self.trees.pop(worker, None)

    def stats(self) -> dict:
        return {"routed": self.routed, "cache_hits": self.hits,
                "hit_rate": round(self.hits / self.routed, 4) if self.routed else 0.0}


def make_policy(name: str, **kwargs) -> RoutingPolicy:
    if name == "round_robin":
        return RoundRobin()
    if name == "shortest_queue":
        return ShortestQueue()
    if name == "cache_aware":
        return CacheAware(**kwargs)
    raise ValueError(f"policy must be one of {', '.join(POLICIES)}; got {name!r}")


def request_text(path: str, body: Optional[dict]) -> str:
    """The text a request's prefix is read from: its prompt, chat messages or token ids."""
    if not isinstance(body, dict):
        return ""
    if "messages" in body and isinstance(body["messages"], list):
        return "".join(f"{m.get('role', '')}:{m.get('content', '')}\n"
                       for m in body["messages"] if isinstance(m, dict))
    for key in ("text", "prompt", "input_ids"):
        value = body.get(key)
        if isinstance(value, list) and value and not isinstance(value[0], int):
            value = value[0]  # a batch: routed whole, by its first prompt
        if isinstance(value, list):
            return " ".join(map(str, value))
        if isinstance(value, str):
            return value
    return ""
