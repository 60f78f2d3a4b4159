"""Drafts from a draft model (EAGLE, EAGLE3, NEXTN): a chain of the draft's greedy tokens, or
with --speculative-eagle-topk > 1 a tree (scheduler/tree_drafter.py).

After every target forward (executor/draft_runner.py keeps its hidden states), `after_step`
brings the draft up to date with what the step committed, in one batched draft forward:
each request's new positions (the prefill chunk, or the verified tokens it kept) get the
draft's KV, token i+1 paired with the target's hidden state at position i. For a request
whose every token is now computed but the newest, the last row of that forward gives its
first draft; k - 1 more draft decode steps (batched over those requests) extend the chain.
The chain waits in `req.spec_state` for the next step's `propose`, tagged with the
sequence length it continues, so a request that changed meanwhile (retracted, restarted)
gets no stale drafts.

Drafts are the draft's argmax: the verifier treats them as one-hot proposals, which keeps
sampled requests exact in distribution (spec_verify.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Union

import torch

from rollserve.core.batch import ScheduleBatch
from rollserve.core.draft_tree import DraftTree, path_rows
from rollserve.executor.draft_runner import DraftRunner, scratch_slots_per_row
from rollserve.executor.model_runner import ForwardOutput
from rollserve.kernels.dispatch import host_to_device
from rollserve.scheduler.request import Req
from rollserve.scheduler.tree_drafter import grow_trees


@dataclass
class DraftChain:
    seq_len: int  # the request's length the drafts continue
    tokens: List[int]


class ModelDrafter:
    def __init__(self, runner, algorithm: str, draft_model_path, num_drafts: int,
                 topk: int = 1, num_steps: Optional[int] = None):
        self.runner = runner
        self.num_drafts = num_drafts
        self.topk = topk
        self.num_steps = num_steps or num_drafts  # a tree's depth (a chain's is num_drafts)
        scratch = scratch_slots_per_row(num_drafts, topk, self.num_steps)
        # draft forwards per step: the catch-up, then a chain's or a tree's further steps
        per_step = num_drafts if topk <= 1 else self.num_steps
        self.draft = DraftRunner(runner, algorithm, draft_model_path, scratch + 1, per_step)

    def propose(self, req: Req, most: int) -> Union[List[int], DraftTree]:
        """The drafts for req's next verify step, at most `most` of them: a chain's tokens, or a
        DraftTree (topk > 1)."""
        drafts = req.spec_state
        if not isinstance(drafts, (DraftChain, DraftTree)) or drafts.seq_len != req.seq_len:
            return []
        most = max(min(most, self.num_drafts), 0)
        return drafts.cut(most) if isinstance(drafts, DraftTree) else drafts.tokens[:most]

    def weights_changed(self) -> None:
        self.draft.weights_changed()

    def settle_draft_forwards(self) -> None:
        """DP attention: the draft forwards still owed since the last target forward, idle
        (executor/draft_lockstep.py)."""
        if self.draft.lockstep is not None:
            self.draft.lockstep.settle()

    def after_step(self, batch: ScheduleBatch, result: ForwardOutput) -> None:
        """Draft KV for what this step computed and committed; the next chains."""
        hidden = result.spec_hidden
        rows, prefix, tokens, index = [], [], [], []
        wanting: List[Req] = []  # requests whose last row drafts, in forward order
        offset = 0
        for entry in batch.entries:
            req, first = entry.req, offset
            offset += len(entry.tokens)
            if req.finished or req.req_pool_idx is None:
                continue
            # tokens whose successor is known: all of a prefill chunk, the kept ones of a verify
            n = min(len(entry.tokens), req.seq_len - 1 - entry.start)
            if n <= 0:
                continue
            rows.append(req.req_pool_idx)
            prefix.append(entry.start)
            tokens.append(req.fill_ids[entry.start + 1:entry.start + n + 1])
            if entry.tree_parents is None:
                index.extend(range(first, first + n))
            else:  # a verified tree: the hidden states of the accepted path's rows
                index.extend(first + r for r in path_rows(entry.tree_parents, entry.tokens,
                                                          tokens[-1][:n - 1]))
            # a chain only where the next step can verify one (scheduler/speculative.py)
            if entry.start + n == req.seq_len - 1 and req.grammar is None \
                    and req.remaining_new_tokens > 1:
                wanting.append(req)
            else:
                req.spec_state = None
        if not rows:
            return
        pool = self.runner.req_pool
        # the slots the request holds now (the radix cache may have swapped a chunk's for its own)
        slots = torch.cat([pool.slots(r, p + len(t))[p:] for r, p, t in zip(rows, prefix, tokens)])
        picked = hidden[host_to_device(torch.tensor(index, dtype=torch.int64), hidden.device)]
        for_logits, carried = self.draft.forward(rows, prefix, tokens, slots, picked)
        if not wanting:
            return
        ends, last = {}, -1  # request row -> its last packed row in that forward
        for row, t in zip(rows, tokens):
            last += len(t)
            ends[row] = last
        pick = host_to_device(torch.tensor([ends[r.req_pool_idx] for r in wanting],
                                           dtype=torch.int64), for_logits.device)
        if self.topk > 1:
            grow_trees(self.draft, wanting, for_logits[pick], carried[pick], self.topk,
                       self.num_steps, self.num_drafts, self.runner.context_len)
        else:
            self._chains(wanting, self.draft.draft_ids(for_logits[pick]), carried[pick])

    def _chains(self, reqs: List[Req], first: List[int], carried: torch.Tensor) -> None:
        """Steps 2..k of each chain, one batched draft decode step each; `carried` row j
        belongs to reqs[live[j]]."""
        chains: Dict[int, List[int]] = {id(r): [t] for r, t in zip(reqs, first)}
        pool, limit = self.runner.req_pool, self.runner.context_len - 1
        live = list(range(len(reqs)))
        for k in range(self.num_drafts - 1):
            # draft token k + 1 sits at position seq_len - 1 + k, in a scratch slot
            still = [j for j, i in enumerate(live) if reqs[i].seq_len - 1 + k <= limit]
            if not still:
                break
            if len(still) != len(live):
                carried = carried[host_to_device(torch.tensor(still, dtype=torch.int64),
                                                 carried.device)]
                live = [live[j] for j in still]
            batch = [reqs[i] for i in live]
            positions = [req.seq_len - 1 + k for req in batch]
            rows = [req.req_pool_idx for req in batch]
            slots = [self.draft.scratch_slot(row, k) for row in rows]
            pool.write_each(rows, positions, torch.tensor(slots, dtype=torch.int64))
            ids, carried = self.draft.chain_step(rows, positions,
                                                 [chains[id(req)][-1] for req in batch], slots,
                                                 carried)
            for req, token in zip(batch, ids):
                chains[id(req)].append(token)
        for req in reqs:
            chain = chains[id(req)]
            req.spec_state = DraftChain(req.seq_len, chain)
            if len(chain) > 1:  # scratch ids out of the table: the target's pool has no such slots
                pool.write(req.req_pool_idx, req.seq_len - 1,
                           torch.zeros(len(chain) - 1, dtype=torch.int64))
