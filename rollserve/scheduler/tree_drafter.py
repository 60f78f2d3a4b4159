"""Tree drafts from a draft model (--speculative-eagle-topk k > 1), built as SGLang's EAGLE does.

Each node's score is the cumulative draft log-probability of its path from the root (the
request's last verified token). Step 0 takes the k likeliest first tokens: the frontier.
Each of the next num_steps - 1 draft steps runs the frontier through the draft model (one
batched forward, every frontier node attending to the request's draft KV plus its own
ancestors' through a tree mask), expands every frontier node's k likeliest children
(k * k candidates) and keeps the k best of them as the next frontier. In the end the best
`num_nodes` (--speculative-num-draft-tokens - 1) of all candidates by score form the tree:
a child never scores above its parent and ties keep the earlier (the parent), so the chosen
nodes are always a connected tree rooted at the last verified token, ranked parents first.

Frontier nodes' draft KV goes to the row's scratch slots (executor/draft_runner.py),
entered in the request's req_to_token row past its committed KV in forward order while the
tree grows, and reset to the padding slot 0 afterwards.
"""

from __future__ import annotations

from typing import List

import torch

from rollserve.core.draft_tree import DraftTree
from rollserve.executor.draft_runner import DraftRunner
from rollserve.kernels.dispatch import host_to_device
from rollserve.scheduler.request import Req


class _Growing:
    """One request's candidates (tokens, parents, scores by node index) and its frontier."""

    def __init__(self, req: Req):
        self.req = req
        self.tokens: List[int] = []
        self.parents: List[int] = []
        self.scores: List[float] = []
        self.frontier: List[int] = []  # node indices
        self.column = {}  # node -> its column among the forwarded nodes (row position - base)

    def add(self, token: int, parent: int, score: float) -> int:
        self.tokens.append(token)
        self.parents.append(parent)
        self.scores.append(score)
        return len(self.tokens) - 1

    def visible(self, node: int, width: int) -> torch.Tensor:
        """[width] bool: the forwarded columns `node` sees (its ancestors and itself)."""
        row = torch.zeros(width, dtype=torch.bool)
        while node >= 0:
            row[self.column[node]] = True
            node = self.parents[node]
        return row

    def tree(self, num_nodes: int) -> DraftTree:
        order = sorted(range(len(self.tokens)), key=lambda i: -self.scores[i])[:num_nodes]  # stable
        rank = {node: i for i, node in enumerate(order)}
        return DraftTree(self.req.seq_len, [self.tokens[i] for i in order],
                         [-1 if self.parents[i] < 0 else rank[self.parents[i]] for i in order])


def grow_trees(draft: DraftRunner, reqs: List[Req], states: torch.Tensor, carried: torch.Tensor,
               topk: int, num_steps: int, num_nodes: int, context_len: int) -> None:
    """Sets each request's req.spec_state to its DraftTree. states / carried row i: the
    catch-up forward's last row of reqs[i] (for its first tokens' logits / fed to step 1)."""
    pool = draft.runner.req_pool
    grown = [_Growing(req) for req in reqs]
    logp, ids = draft.draft_topk(states, topk)
    for g, scores, tokens in zip(grown, logp.tolist(), ids.tolist()):
        g.frontier = [g.add(t, -1, s) for t, s in zip(tokens, scores)]
    feed = carried.repeat_interleave(topk, dim=0)  # the hidden state each frontier node reads
    live = list(range(len(reqs)))
    for j in range(num_steps - 1):
        # frontier nodes (depth j + 1) run at draft position seq_len - 1 + j; the row holds
        # the forwarded nodes at seq_len - 1 .. seq_len - 2 + (j + 1) * topk
        fits = [i for i, g in enumerate(live) if reqs[g].seq_len - 1 + (j + 1) * topk
                <= context_len + 1 and reqs[g].seq_len - 1 + j <= context_len - 1]
        if not fits:
            break
        if len(fits) != len(live):
            keep = [i * topk + f for i in fits for f in range(topk)]
            feed = feed[host_to_device(torch.tensor(keep, dtype=torch.int64), feed.device)]
            live = [live[i] for i in fits]
        batch = [grown[i] for i in live]
        rows, prefix, tokens, positions, masks, slots = [], [], [], [], [], []
        for g in batch:
            req, base = g.req, g.req.seq_len - 1
            own = [draft.scratch_slot(req.req_pool_idx, j * topk + f) for f in range(topk)]
            pool.write(req.req_pool_idx, base + j * topk, torch.tensor(own, dtype=torch.int64))
            for f, node in enumerate(g.frontier):
                g.column[node] = j * topk + f
            rows.append(req.req_pool_idx)
            prefix.append(base + j * topk)
            tokens.append([g.tokens[n] for n in g.frontier])
            positions.extend([base + j] * topk)
            masks.append(torch.stack([g.visible(n, (j + 1) * topk) for n in g.frontier]))
            slots.extend(own)
        for_logits, out = draft.forward(rows, prefix, tokens, torch.tensor(slots, dtype=torch.int64),
                                        feed, positions, masks)
        logp, ids = draft.draft_topk(for_logits, topk)  # [R * topk, topk]
        front = torch.tensor([[g.scores[n] for n in g.frontier] for g in batch],
                             dtype=logp.dtype, device=logp.device)
        cand = (front[:, :, None] + logp.view(len(batch), topk, topk)).view(len(batch), -1)
        best = cand.topk(topk, dim=1).indices  # [R, topk] over topk * topk candidates
        pick = (best // topk + torch.arange(len(batch), device=best.device)[:, None] * topk).view(-1)
        feed = out[pick]
        for g, c_scores, c_ids, chosen in zip(batch, cand.tolist(),
                                              ids.view(len(batch), -1).tolist(), best.tolist()):
            nodes = [g.add(t, g.frontier[c // topk], s)
                     for c, (t, s) in enumerate(zip(c_ids, c_scores))]
            g.frontier = [nodes[c] for c in chosen]
    for g in grown:
        g.req.spec_state = g.tree(num_nodes)
        if g.column:  # scratch ids out of the table: the target's pool has no such slots
            pool.write(g.req.req_pool_idx, g.req.seq_len - 1,
                       torch.zeros(len(g.column), dtype=torch.int64))
