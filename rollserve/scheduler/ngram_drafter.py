"""NGRAM drafts (`--speculative-algorithm NGRAM`): prompt / context lookup, no weights.

The last n tokens of a request (prompt + output) are looked up among its earlier
tokens; where they occurred before, the tokens that followed are proposed as drafts.
The longest window that matches wins (n from `max_window` down to 1), and among its
occurrences the latest. Code, math and retrieval-heavy answers repeat their context,
which is where this pays; elsewhere it proposes little and costs a dictionary lookup.

Each request keeps its own index, extended by the tokens committed since the last
step (one dictionary write per window length and token), kept on the request
(`req.spec_state`) so that it survives retraction.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

from rollserve.scheduler.request import Req


class NgramIndex:
    """For each window length n: the last n tokens before position j -> j (latest j)."""

    def __init__(self, max_window: int):
        self.max_window = max_window
        self.tables: List[Dict[Tuple[int, ...], int]] = [dict() for _ in range(max_window + 1)]
        self.length = 0  # tokens indexed so far
        self.last_token = None  # the token at length - 1, to notice a sequence that changed

    def extend(self, tokens: List[int]) -> None:
        """Index every position of `tokens` (the whole sequence) from self.length on. Only
        positions with a following token are entered: the sequence's own suffix must not
        match itself."""
        if self.length > len(tokens) or (self.length and tokens[self.length - 1] != self.last_token):
            self.__init__(self.max_window)  # the sequence was rewritten (a restarted request)
        for j in range(max(self.length, 1), len(tokens)):
            for n in range(1, min(self.max_window, j) + 1):
                self.tables[n][tuple(tokens[j - n:j])] = j
        self.length = len(tokens)
        self.last_token = tokens[-1] if tokens else None

    def propose(self, tokens: List[int], k: int) -> List[int]:
        """Up to k tokens that followed the longest earlier match of the sequence's end."""
        for n in range(min(self.max_window, len(tokens)), 0, -1):
            j = self.tables[n].get(tuple(tokens[-n:]))
            if j is not None:
                return tokens[j:j + k]
        return []


class NgramDrafter:
    """Drafts for a request from its own prompt and output (see the module docstring)."""

    def __init__(self, num_drafts: int, max_window: int):
        self.num_drafts = num_drafts
        self.max_window = max(1, max_window)

    def propose(self, req: Req, most: int) -> List[int]:
        most = min(most, self.num_drafts)
        if most <= 0:
            return []
        index = req.spec_state
        if not isinstance(index, NgramIndex):
            index = req.spec_state = NgramIndex(self.max_window)
        tokens = req.fill_ids
        index.extend(tokens)
        return index.propose(tokens, most)
