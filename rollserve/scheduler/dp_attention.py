"""DP attention (--enable-dp-attention): the ranks of one replica run attention on their own
requests and meet only inside the MoE blocks (executor/layers/moe.py exchanges the tokens).

Rank 0 still receives every message and shares it (tp_sync.share_messages), so all ranks
see the same requests in the same order; each request is kept by one rank, the one with
the fewest requests, which every rank computes alike from the loads shared at the last
step (`owns`). Before each step the ranks share whether they have work (`sync`): when any
has, every rank runs exactly one forward, a rank with nothing to run an idle one
(ModelRunner.idle_forward), since each MoE block is a collective all ranks must enter.
Under the overlap scheduler (on by default, as in SGLang) the rule is the same: each step
launches at most one forward per rank, the idle pass where it launches none
(overlap_scheduler.py runs it before processing the step in flight), and the forward's token
counts travel over the CPU group before its kernels, so no rank waits on its GPU to agree.
A draft model with MoE blocks (NEXTN) runs the same number of draft forwards on every
rank after each target forward, idle ones where a rank drafted less
(executor/draft_lockstep.py). What drains the overlap pipeline (control calls, penalties,
retraction) runs no collective, except a speculative scheduler's drain at a control call,
which every rank runs alike (it settles the draft forwards there).
Decisions that must agree across ranks (a deferred weight update's wait and timeout, the
end of a draining pause) read the shared values, never a rank's own.
"""

from __future__ import annotations

import time
from typing import List, Optional

from rollserve.executor.parallel_state import all_gather_objects, group_rank, group_size


class DPAttention:
    def __init__(self):
        self.rank, self.size = group_rank(), group_size()
        self.loads: List[int] = [0] * self.size  # each rank's requests, as of the last sync
        self.assigned: List[int] = [0] * self.size  # given out since then
        self.busy_anywhere = False
        self.clock: Optional[float] = None  # rank 0's time at the last sync: one clock for all

    def owns(self) -> bool:
        """Whether this rank keeps the next request (every rank calls it for every request,
        in the same order, and gets the same owner)."""
        totals = [load + extra for load, extra in zip(self.loads, self.assigned)]
        owner = totals.index(min(totals))
        self.assigned[owner] += 1
        return owner == self.rank

    def sync(self, busy: bool, load: int) -> bool:
        """Shares (has work, requests held) between the ranks; True when any rank has work."""
        shared = all_gather_objects((bool(busy), int(load), time.monotonic()))
        self.loads = [n for _, n, _ in shared]
        self.assigned = [0] * self.size
        self.busy_anywhere = any(b for b, _, _ in shared)
        self.clock = shared[0][2]
        return self.busy_anywhere

    def busy_now(self, scheduler) -> bool:
        """Whether any rank has work at this point: a collective, for a control call that every
        rank runs at the same point (an update in mode wait defers on all ranks, or on none)."""
        return any(all_gather_objects(bool(scheduler.has_work())))

    def step(self, scheduler, runner) -> list:
        """One step on every rank: this rank's batch, or an idle pass through the MoE blocks
        when it has none to run (nothing queued, or nothing that fits this step)."""
        before = runner.num_forwards
        outputs = scheduler.step()
        if runner.num_forwards == before:
            runner.idle_forward()
        end_step = getattr(scheduler, "end_dp_step", None)
        if end_step is not None:  # a draft model's forwards: the same count on every rank
            end_step()
        return outputs

    @staticmethod
    def combine_info(info: dict) -> dict:
        """get_info on every rank: the replica's request counts are the ranks' sums."""
        every = all_gather_objects(info)
        out = dict(info)
        for key, value in info.items():
            if key.startswith("num_") and isinstance(value, (int, float)) and not isinstance(value, bool):
                out[key] = sum(i.get(key, 0) for i in every)
        return out
