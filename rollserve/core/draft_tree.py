"""The shape of a speculative draft tree, shared by the drafter, the executor and the verifier.

A verify entry brings rows [root, node 1, ..., node n]: the root is the request's last
token (already committed, its KV not yet computed) and the nodes are draft tokens. Each
row's parent is a row index (-1 for the root); parents come before their children, so a
chain is parents [-1, 0, 1, ...]. A row's depth is its distance from the root: it sits at
position kv_len + depth and sees the request's committed KV plus its own ancestors.
Siblings carry distinct tokens, so a committed token sequence names one path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

import torch


@dataclass
class DraftTree:
    """A request's drafts waiting for the next verify step: nodes in the order the drafter
    ranked them (parents first), parents[i] a node index or -1 (the root)."""

    seq_len: int  # the request's length the drafts continue
    tokens: List[int]
    parents: List[int]

    def cut(self, n: int) -> "DraftTree":
        """The first n nodes: still a tree, since every parent precedes its children."""
        return DraftTree(self.seq_len, self.tokens[:n], self.parents[:n])

    def row_parents(self) -> List[int]:
        """Parents over the verify rows [root, nodes...]."""
        return [-1] + [p + 1 for p in self.parents]


def chain_parents(num_rows: int) -> List[int]:
    return list(range(-1, num_rows - 1))


def depths(parents: Sequence[int]) -> List[int]:
    out: List[int] = []
    for p in parents:
        out.append(0 if p < 0 else out[p] + 1)
    return out


def ancestor_mask(parents: Sequence[int]) -> torch.Tensor:
    """[n, n] bool: row i may see row j iff j is i or one of its ancestors."""
    n = len(parents)
    mask = torch.zeros(n, n, dtype=torch.bool)
    for i, p in enumerate(parents):
        if p >= 0:
            mask[i] = mask[p]
        mask[i, i] = True
    return mask


def children(parents: Sequence[int]) -> List[List[int]]:
    out: List[List[int]] = [[] for _ in parents]
    for i, p in enumerate(parents):
        if p >= 0:
            out[p].append(i)
    return out


def path_rows(parents: Sequence[int], tokens: Sequence[int], accepted: Sequence[int]) -> List[int]:
    """The rows [root, ...] of the path whose node tokens are `accepted` (from the root down)."""
    kids = children(parents)
    rows = [0]
    for token in accepted:
        rows.append(next(c for c in kids[rows[-1]] if tokens[c] == token))
    return rows
