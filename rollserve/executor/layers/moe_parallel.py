"""How a MoE block's routed experts are split over the tensor-parallel ranks.

Two layouts, as SGLang's `--ep-size` chooses them (executor/parallel_state.py):

* MoE-TP (ep_size 1): every rank holds every expert, and its share of each expert's
  intermediate rows (gate|up column-parallel, down row-parallel), like a dense MLP;
* EP (ep_size == tp_size): rank r holds experts [r * E / ep, (r + 1) * E / ep) whole.

Either way the router runs on every rank over the same tokens (attention's all-reduce left
them identical), so every rank routes alike; each rank's experts give a partial sum of the
block's output, and one all-reduce adds the ranks' parts (for EP this all-reduce is the
combine: a token's copies routed to another rank's experts contribute zero here). Under DP
attention with EP and --moe-a2a-backend deepep, each rank routes only its own tokens and
sends each copy to its expert's rank instead (layers/moe_dispatch.py).

The checkpoint still names each expert's full tensors. Under EP a rank keeps a zero-length
slice of the experts it does not hold, so loading skips them, weight updates check their full
shapes, and get_weights_by_name gathers each expert from its owner (models/weights.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

import torch

from rollserve.executor.layers.parallel import CheckpointSlice
from rollserve.executor.parallel_state import ep_size, group_rank, group_size, split_evenly


@dataclass(frozen=True)
class ExpertLayout:
    num_experts: int  # in the checkpoint
    intermediate: int  # one expert's intermediate rows, in the checkpoint
    first_local: int  # the first expert this rank holds
    num_local: int  # how many it holds
    inter_start: int  # which of an expert's intermediate rows it holds
    inter_local: int

    @property
    def split(self) -> bool:
        return self.num_local != self.num_experts or self.inter_local != self.intermediate

    def is_local(self, expert: int) -> bool:
        return self.first_local <= expert < self.first_local + self.num_local

    def local_ids(self, topk_ids: torch.Tensor) -> torch.Tensor:
        """Global expert ids -> this rank's (0..num_local-1); another rank's experts map to
        num_local, which the MoE kernels read as "not here: contributes nothing"."""
        local = topk_ids - self.first_local
        return torch.where((local >= 0) & (local < self.num_local), local,
                           torch.full_like(local, self.num_local))

    def slices(self, names: Tuple[str, str, str]) -> Dict[str, CheckpointSlice]:
        """Per-expert checkpoint name (relative to the experts module) -> this rank's slice."""
        if not self.split:
            return {}
        gate, up, down = self.names_of(names)
        out = {}
        for e in range(self.num_experts):
            if self.is_local(e):
                rows = CheckpointSlice(0, self.inter_start, self.inter_local, self.intermediate)
                cols = CheckpointSlice(1, self.inter_start, self.inter_local, self.intermediate)
            else:  # held elsewhere: nothing of it here
                rows = CheckpointSlice(0, 0, 0, self.intermediate)
                cols = CheckpointSlice(1, 0, 0, self.intermediate)
            out[gate % e], out[up % e], out[down % e] = rows, rows, cols
        return out

    @staticmethod
    def names_of(names: Tuple[str, str, str]) -> Tuple[str, str, str]:
        return tuple(f"%d.{n}.weight" for n in names)


def expert_layout(num_experts: int, intermediate: int) -> ExpertLayout:
    rank, size = group_rank(), group_size()  # under DP attention too: the experts are split
    if size > 1 and ep_size() == size:
        if num_experts % size:
            raise ValueError(f"the number of experts ({num_experts}) is not divisible by "
                             f"ep_size {size}")
        first, count = split_evenly(num_experts, rank, size, "num_experts")
        return ExpertLayout(num_experts, intermediate, first, count, 0, intermediate)
    start, rows = split_evenly(intermediate, rank, size, "moe_intermediate_size")
    return ExpertLayout(num_experts, intermediate, 0, num_experts, start, rows)
