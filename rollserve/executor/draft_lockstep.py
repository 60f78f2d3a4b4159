"""A draft model with MoE blocks under DP attention (--enable-dp-attention): NEXTN's MTP layer
routes as the target's layers do, so each of its forwards enters the MoE block's exchange
(executor/layers/moe.py), which every rank of the replica must enter the same number of times.

Each rank drafts for its own requests (scheduler/model_drafter.py): after a step's target
forward, one catch-up forward for what the step committed, then the chain's steps (num_drafts
- 1), or a tree's (num_steps - 1). How many of them a rank runs depends on its requests: none
when it was idle or nothing it holds wants a draft, fewer steps when its chains reach the
context length. So the count is fixed instead: after every target forward (its own, or the
idle pass), every rank takes part in exactly `per_step` draft forwards, the ones it runs (each
exchanges its token count first, as a target forward does) and idle ones that bring no tokens
for the rest, run where no rank meets the others in anything else:
* the plain scheduler drafts inside the step: the rest is run at the end of the step
  (scheduler/dp_attention.py), before the next step's sync;
* the overlap scheduler drafts for step i when it settles it, at the start of step i + 1
  (after the sync) or when a control call drains it (on every rank alike): the rest is run
  before the next target forward (ModelRunner's hook) and after each drain.
Where no rank brings a token the exchange is skipped alike (the counts say so).

EAGLE heads are dense: under DP attention each rank runs its head alone (tp_size() is 1) and
no lock-step is needed.
"""

from __future__ import annotations

from typing import List, Optional

import torch
from torch import nn

from rollserve.executor.layers.moe import SparseMoeBlock, idle_exchanges
from rollserve.executor.parallel_state import all_gather_counts, dp_attention


class DraftLockstep:
    def __init__(self, model: nn.Module, per_step: int, dtype: torch.dtype, device: torch.device):
        self.model, self.per_step, self.dtype, self.device = model, per_step, dtype, device
        self.ran = per_step  # draft forwards taken part in since the last target forward

    @classmethod
    def for_model(cls, model: nn.Module, per_step: int, dtype: torch.dtype,
                  device: torch.device) -> Optional["DraftLockstep"]:
        """The lock-step where it is needed: DP attention and a draft with MoE blocks."""
        if not dp_attention() or not any(isinstance(m, SparseMoeBlock) for m in model.modules()):
            return None
        return cls(model, per_step, dtype, device)

    def counts(self, num_tokens: int) -> List[int]:
        """A draft forward this rank runs: every rank's token count, for its MoE exchanges."""
        self.ran += 1
        if self.ran > self.per_step:  # the others would wait for an exchange they never enter
            raise RuntimeError(f"DP attention: draft forward {self.ran} after one target forward, "
                               f"more than the {self.per_step} every rank takes part in")
        return all_gather_counts(num_tokens)

    def settle(self) -> None:
        """The remaining draft forwards owed since the last target forward, idle."""
        while self.ran < self.per_step:
            self.ran += 1
            idle_exchanges(self.model, all_gather_counts(0), self.dtype, self.device)

    def target_forward(self) -> None:
        """A target forward (or idle pass) begins: the previous one's draft forwards are
        settled first, then this one's are owed."""
        self.settle()
        self.ran = 0
