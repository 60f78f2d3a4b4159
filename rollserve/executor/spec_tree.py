"""The accept rule for a tree of drafts (speculative decoding with --speculative-eagle-topk > 1).

A verify entry's rows are [root, nodes...] with parent rows (core/draft_tree.py); row r's
logits are the target's next-token distribution after the request's tokens plus the path
root..r. The drafts are one-hot proposals (the draft's top-k tokens, as SGLang's
target-only verification treats them).

* greedy: from the root, follow the child whose token is the target's argmax at the
  current row; commit the argmax where no child matches. Exactly greedy decoding's tokens.
* sampled (multi-draft speculative sampling with one-hot drafts): at the current row with
  target distribution p, try its children x_1, x_2, ... in order; x_i is accepted with
  probability p(x_i) / m, m the mass p has left after the children already rejected (each
  rejection zeroes that token: the residual max(p - one_hot(x_i), 0) of a one-hot draft,
  renormalized). On acceptance walk down to x_i; when every child is rejected (or a leaf
  is reached) the next token is drawn from p with the rejected children removed. Each
  committed token is therefore distributed as p: P(x_i) = p(x_i) along the rejection chain,
  and any other token keeps its share of the rest.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch

from rollserve.core.draft_tree import children


def tree_accept_greedy(argmax: Sequence[int], parents: Sequence[int],
                       tokens: Sequence[int]) -> Tuple[List[int], int]:
    """argmax[r] the target's token at row r, tokens[r] row r's token (tokens[0], the root's,
    is unused). Returns (the accepted rows' path [root, ...], the next token)."""
    kids = children(parents)
    path = [0]
    while True:
        want = argmax[path[-1]]
        nxt = next((c for c in kids[path[-1]] if tokens[c] == want), None)
        if nxt is None:
            return path, want
        path.append(nxt)


def tree_walk_sampled(p_child: Sequence[float], parents: Sequence[int], tokens: Sequence[int],
                      uniform: Sequence[float]) -> Tuple[List[int], List[int]]:
    """The sampled walk: p_child[r] = p_parent(r)(tokens[r]), the target's probability of row
    r's token at its parent row (p normalized), uniform[r] the draw that decides row r.
    Returns (the accepted path [root, ...], the rows rejected at its last row): the next
    token is drawn from the last row's p without the rejected rows' tokens (tree_residual)."""
    kids = children(parents)
    path = [0]
    while True:
        left, rejected = 1.0, []
        for c in kids[path[-1]]:
            # u < p(x) / left  <=>  u * left < p(x): no division when the mass ran out
            if uniform[c] * left < p_child[c]:
                break
            left -= p_child[c]
            rejected.append(c)
        else:
            return path, rejected
        path.append(c)


def tree_residual(p: torch.Tensor, removed: List[List[int]]) -> torch.Tensor:
    """p [B, V] with each row's `removed` tokens zeroed (renormalizing is the draw's business);
    a row whose mass is all gone (reached only through rounding) keeps p."""
    if not any(removed):
        return p
    rows = [b for b, ts in enumerate(removed) for _ in ts]
    cols = [t for ts in removed for t in ts]
    out = p.clone()
    out[torch.tensor(rows, device=p.device), torch.tensor(cols, device=p.device)] = 0.0
    return torch.where(out.sum(dim=1, keepdim=True) > 0, out, p)
