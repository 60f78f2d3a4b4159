"""An approximate prefix tree of the texts a router sent to one worker (SGLang's router keeps
one per worker for its cache_aware policy): how much of a new request's text that worker
has probably cached. Approximate because the worker's own radix cache evicts on its own
schedule; this tree caps its size in characters and drops its least recently used leaves.
"""

from __future__ import annotations

import itertools
from typing import Dict, Optional

_clock = itertools.count()


class _Node:
    __slots__ = ("label", "children", "parent", "last_used")

    def __init__(self, label: str, parent: Optional["_Node"]):
        self.label = label  # the edge text from the parent to this node
        self.children: Dict[str, _Node] = {}
        self.parent = parent
        self.last_used = next(_clock)


class PrefixTree:
    def __init__(self, max_chars: int = 1 << 20):
        self.root = _Node("", None)
        self.max_chars = max_chars
        self.size = 0  # characters held

    def match(self, text: str) -> int:
        """Length of the longest prefix of `text` in the tree (marks the path used)."""
        node, matched = self.root, 0
        while matched < len(text):
            child = node.children.get(text[matched])
            if child is None:
                break
            common = _common_prefix(child.label, text, matched)
            child.last_used = next(_clock)
            matched += common
            if common < len(child.label):
                break
            node = child
        return matched

    def insert(self, text: str) -> None:
        node, pos = self.root, 0
        while pos < len(text):
            child = node.children.get(text[pos])
            if child is None:
                leaf = _Node(text[pos:], node)
                node.children[text[pos]] = leaf
                self.size += len(leaf.label)
                break
            common = _common_prefix(child.label, text, pos)
            child.last_used = next(_clock)
            if common < len(child.label):  # split the edge where the texts part
                middle = _Node(child.label[:common], node)
                node.children[text[pos]] = middle
                child.label = child.label[common:]
                child.parent = middle
                middle.children[child.label[0]] = child
                child = middle
            node, pos = child, pos + common
        self._evict()

    def _evict(self) -> None:
        while self.size > self.max_chars:
            leaf = self._oldest_leaf(self.root)
            if leaf is None or leaf is self.root:
                return
            del leaf.parent.children[leaf.label[0]]
            self.size -= len(leaf.label)

    def _oldest_leaf(self, node: _Node) -> Optional[_Node]:
        best = None
        stack = [node]
        while stack:
            n = stack.pop()
            if not n.children and n is not self.root:
                if best is None or n.last_used < best.last_used:
                    best = n
            stack.extend(n.children.values())
        return best


def _common_prefix(label: str, text: str, start: int) -> int:
    n = 0
    limit = min(len(label), len(text) - start)
    while n < limit and label[n] == text[start + n]:
        n += 1
    return n
