"""NGRAM tree drafts (--speculative-ngram-max-bfs-breadth > 1), built as SGLang's n-gram trie.

SGLang's trie holds every string of up to D = --speculative-ngram-max-trie-depth tokens that
occurred; here the strings are the request's own tokens (prompt and output, as for the
chain, scheduler/ngram_drafter.py), walked without being stored: a trie node is the list of
earlier places where its string ended, its children the tokens that followed there, the one
that followed latest first.

Anchors: for each length d = D - 1 down to 1 (the longest match first; older SGLang's
--speculative-ngram-min/max-match-window-size bound d), the node of the sequence's last d
tokens, if they occurred before with a token after them. Each anchor's
continuations (at most D - d tokens deep) go into one draft tree rooted at the request's
last token; a continuation some anchor already proposed is the same node (siblings carry
distinct tokens), so shared prefixes merge. The tree stops at num_drafts nodes.

* BFS (--speculative-ngram-match-type BFS, SGLang's default: recency). An anchor of length d
  starts with breadth b = min_breadth + (D - 1 - d) * s, s = (max_breadth - min_breadth) /
  (D - 1): a long match is trusted with few branches, a short one gets more. Breadth-first,
  each node takes its first max(1, int(b)) children (latest first); its children's b is
  b - s.
* PROB (frequency). A node's children are its max_breadth most frequent ones (ties: latest
  first), each weighted count / (their counts' sum) times the node's weight (an anchor: 1);
  anchor by anchor (longest first, as SGLang), the heaviest waiting child joins the tree next.

Nodes are listed as they joined (parents first), so a pool with less room keeps the best
ones (core/draft_tree.py's cut). A lookup compares the latest `RECENT` earlier places of the
last token (SGLang bounds its shared trie by --speculative-ngram-capacity instead). A tree
that came out as a chain is proposed as a chain: no tree mask to verify it.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from typing import Dict, List, Optional, Sequence, Tuple, Union

from rollserve.core.draft_tree import DraftTree, chain_parents
from rollserve.scheduler.ngram_drafter import NgramDrafter
from rollserve.scheduler.request import Req

RECENT = 64  # earlier places of the last token looked at per lookup, latest first
MATCH_TYPES = ("BFS", "PROB")


class TokenPlaces:
    """token -> every position (ascending) where it occurs with a token after it."""

    def __init__(self):
        self.where: Dict[int, List[int]] = {}
        self.length = 0  # tokens indexed so far
        self.last_token = None  # the token at length - 1, to notice a rewritten sequence

    def extend(self, tokens: Sequence[int]) -> None:
        stale = self.length > len(tokens) or (
            self.length > 0 and tokens[self.length - 1] != self.last_token)
        if stale:  # a restarted request: its sequence is not the one indexed
            self.__init__()
        # position j is entered once tokens[j + 1] exists: the end must not match itself
        for j in range(max(0, self.length - 1), len(tokens) - 1):
            self.where.setdefault(tokens[j], []).append(j)
        self.length = len(tokens)
        self.last_token = tokens[-1] if tokens else None

    def latest(self, token: int) -> List[int]:
        return self.where.get(token, [])[-RECENT:][::-1]


class _Tree:
    """The draft tree being merged: nodes in joining order, (parent, token) -> node; and the
    trie's children met so far, by (anchor's place list, tree node): anchors that share their
    places walk the same trie, so each node's children are gathered once."""

    def __init__(self, tokens: Sequence[int], cap: int):
        self.seq, self.cap = tokens, cap
        self.tokens: List[int] = []
        self.parents: List[int] = []
        self.index: Dict[Tuple[int, int], int] = {}
        self.seen: Dict[Tuple[int, int], Dict[int, List[int]]] = {}

    def children(self, at: List[int], node: int, places: List[int], k: int) -> Dict[int, List[int]]:
        key = (id(at), node)
        if key not in self.seen:
            self.seen[key] = _children(self.seq, places, k)
        return self.seen[key]

    def full(self) -> bool:
        return len(self.tokens) >= self.cap

    def node(self, parent: int, token: int) -> int:
        key = (parent, token)
        if key not in self.index:
            self.index[key] = len(self.tokens)
            self.tokens.append(token)
            self.parents.append(parent)
        return self.index[key]


def _children(tokens: Sequence[int], places: List[int], k: int) -> Dict[int, List[int]]:
    """The children of the trie node reached k tokens past `places` (latest first): next
    token -> the places that continue with it (latest first; dict order: latest first)."""
    end = len(tokens) - 1
    out: Dict[int, List[int]] = {}
    for j in places:
        if j + 1 + k <= end:
            out.setdefault(tokens[j + 1 + k], []).append(j)
    return out


def anchors(tokens: Sequence[int], places: List[int], max_depth: int, min_window: int = 1,
            max_window: Optional[int] = None) -> List[Tuple[int, List[int]]]:
    """(d, the places whose last d tokens equal the sequence's), d from max_depth - 1 (or
    max_window) down to min_window, where any place matches. places: earlier positions of
    the last token, latest first. Consecutive anchors with the same places share one list
    (their tries are the same)."""
    end, longest = len(tokens) - 1, max(1, max_depth - 1)
    if max_window is not None:
        longest = min(longest, max_window)
    matched = []
    for j in places:
        n = 1
        while n < longest and j - n >= 0 and tokens[j - n] == tokens[end - n]:
            n += 1
        matched.append(n)
    out: List[Tuple[int, List[int]]] = []
    for d in range(max(matched, default=0), max(1, min_window) - 1, -1):
        if out and len(out[-1][1]) == len(places):  # every place: nothing more to add
            out.append((d, out[-1][1]))
            continue
        at = [j for j, n in zip(places, matched) if n >= d]
        out.append((d, out[-1][1] if out and len(out[-1][1]) == len(at) else at))
    return out


def build_tree(tokens: Sequence[int], places: List[int], num_nodes: int, max_depth: int,
               min_breadth: int, max_breadth: int, match_type: str = "BFS",
               windows: Tuple[int, Optional[int]] = (1, None)) -> Tuple[List[int], List[int]]:
    """(node tokens, node parents; -1: the root, the sequence's last token) of the draft tree
    continuing `tokens` (see the module docstring); windows: the shortest and longest match
    used (None: max_depth - 1)."""
    tree = _Tree(tokens, num_nodes)
    found = anchors(tokens, places, max_depth, *windows)
    if match_type == "PROB":
        _grow_by_frequency(tree, tokens, found, max_depth, max_breadth)
    else:
        _grow_by_recency(tree, tokens, found, max_depth, min_breadth, max_breadth)
    return tree.tokens, tree.parents


def _grow_by_recency(tree: _Tree, tokens, found, max_depth, min_breadth, max_breadth) -> None:
    longest = max(1, max_depth - 1)
    step = (max_breadth - min_breadth) / longest
    for d, at in found:
        queue = deque([(-1, (longest - d) * step + min_breadth, at, 0)])
        while queue and not tree.full():
            parent, breadth, places, k = queue.popleft()
            if d + k >= max_depth:  # the trie keeps strings of max_depth tokens at most
                continue
            kids = tree.children(at, parent, places, k)
            for token, follow in itertools.islice(kids.items(), max(1, int(breadth))):
                if tree.full():
                    break
                queue.append((tree.node(parent, token), breadth - step, follow, k + 1))


def _grow_by_frequency(tree: _Tree, tokens, found, max_depth, max_breadth) -> None:
    # (-weight, order, parent, token, places, k, d, anchor's places): one anchor at a time
    heap: list = []
    order = itertools.count()

    def offer(parent: int, places: List[int], k: int, weight: float, d: int, at) -> None:
        if d + k >= max_depth:
            return
        kids = tree.children(at, parent, places, k)
        top = sorted(kids.items(), key=lambda kv: -len(kv[1]))[:max_breadth]  # stable: latest
        total = sum(len(follow) for _, follow in top)
        for token, follow in top:
            heapq.heappush(heap, (-weight * len(follow) / total, next(order), parent, token,
                                  follow, k + 1, d, at))

    for d, at in found:
        offer(-1, at, 0, 1.0, d, at)
        while heap and not tree.full():
            neg, _, parent, token, follow, k, depth, of = heapq.heappop(heap)
            offer(tree.node(parent, token), follow, k, -neg, depth, of)


class NgramTreeDrafter:
    """Tree drafts for a request from its own prompt and output (see the module docstring)."""

    def __init__(self, num_drafts: int, max_trie_depth: int, min_breadth: int,
                 max_breadth: int, match_type: str, windows: Tuple[int, Optional[int]] = (1, None)):
        self.num_drafts = num_drafts
        self.max_trie_depth = max_trie_depth
        self.min_breadth, self.max_breadth = min_breadth, max_breadth
        self.match_type = match_type
        self.windows = windows

    def propose(self, req: Req, most: int) -> Union[List[int], DraftTree]:
        most = min(most, self.num_drafts)
        if most <= 0:
            return []
        index = req.spec_state
        if not isinstance(index, TokenPlaces):
            index = req.spec_state = TokenPlaces()
        tokens = req.fill_ids
        index.extend(tokens)
        places = index.latest(tokens[-1])
        if not places:
            return []
        drafts, parents = build_tree(tokens, places, most, self.max_trie_depth,
                                     self.min_breadth, self.max_breadth, self.match_type,
                                     self.windows)
        if parents == chain_parents(len(parents)):
            return drafts
        return DraftTree(req.seq_len, drafts, parents)


def make_ngram_drafter(config, num_drafts: int):
    """NGRAM's drafter for a SchedulerConfig: trees when its max BFS breadth is above 1, else
    the chain (scheduler/ngram_drafter.py), both within the match window flags."""
    low, high = (config.speculative_ngram_min_match_window_size,
                 config.speculative_ngram_max_match_window_size)
    depth = config.speculative_ngram_max_trie_depth
    if config.speculative_ngram_max_bfs_breadth > 1:
        return NgramTreeDrafter(num_drafts, depth, config.speculative_ngram_min_bfs_breadth,
                                config.speculative_ngram_max_bfs_breadth,
                                config.speculative_ngram_match_type, (low, high))
    return NgramDrafter(num_drafts, high or depth - num_drafts - 1, low)
