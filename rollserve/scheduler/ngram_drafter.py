"""NGRAM chain drafts (`--speculative-algorithm NGRAM`): prompt / context lookup, no weights.

This is the chain (--speculative-ngram-max-bfs-breadth 1); with a breadth > 1 (the
server's default, SGLang's) scheduler/ngram_tree.py drafts trees of earlier continuations.

The end of a request's tokens (prompt + output) is looked up among its earlier tokens;
where it occurred before, the tokens that followed are proposed as drafts. A match is
at least two tokens long (a lone token predicts too little to pay for verifying its
drafts); among the latest `RECENT` earlier places with the same last two tokens, the one
whose match runs back furthest (up to `max_window` tokens) wins, the latest on a tie.
Code, math and retrieval-heavy answers repeat their context, which is where this pays;
elsewhere it proposes little and costs a dictionary lookup.

Each request keeps its own index (`req.spec_state`, so that it survives retraction):
the positions of every pair of tokens, one list append per committed token, a few
bytes a token however long the context.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

from rollserve.scheduler.request import Req

RECENT = 16  # earlier places of the last two tokens compared per lookup, latest first


class NgramIndex:
    """(tokens[j - 1], tokens[j]) -> every j (ascending) that has a following token."""

    def __init__(self, max_window: int, min_window: int = 2):
        self.max_window = max(2, max_window)
        self.min_window = max(2, min_window)  # a match is two tokens at least
        self.where: Dict[Tuple[int, int], List[int]] = {}
        self.length = 0  # tokens indexed so far
        self.last_token = None  # the token at length - 1, to notice a sequence that changed

    def extend(self, tokens: List[int]) -> None:
        """Index `tokens` (the whole sequence) from self.length on. A pair is entered once
        a token follows it: the sequence's own end must not match itself."""
        if self.length > len(tokens) or (self.length and tokens[self.length - 1] != self.last_token):
            self.__init__(self.max_window, self.min_window)  # a rewritten sequence (restarted)
        for j in range(max(self.length - 1, 1), len(tokens) - 1):
            self.where.setdefault((tokens[j - 1], tokens[j]), []).append(j)
        self.length = len(tokens)
        self.last_token = tokens[-1] if tokens else None

    def propose(self, tokens: List[int], k: int) -> List[int]:
        """Up to k tokens that followed the best earlier match of the sequence's end."""
        end = len(tokens) - 1
        if end < 1:
            return []
        places = self.where.get((tokens[end - 1], tokens[end]))
        if not places:
            return []
        best, best_len = -1, 0
        for j in reversed(places[-RECENT:]):
            n = 2
            while n < self.max_window and j - n >= 0 and tokens[j - n] == tokens[end - n]:
                n += 1
            if n > best_len:
                best, best_len = j, n
        return tokens[best + 1:best + 1 + k] if best_len >= self.min_window else []


class NgramDrafter:
    """Drafts for a request from its own prompt and output (see the module docstring)."""

    def __init__(self, num_drafts: int, max_window: int, min_window: int = 2):
        self.num_drafts = num_drafts
        self.max_window, self.min_window = max_window, min_window

    def propose(self, req: Req, most: int) -> List[int]:
        most = min(most, self.num_drafts)
        if most <= 0:
            return []
        index = req.spec_state
        if not isinstance(index, NgramIndex):
            index = req.spec_state = NgramIndex(self.max_window, self.min_window)
        tokens = req.fill_ids
        index.extend(tokens)
        return index.propose(tokens, most)
