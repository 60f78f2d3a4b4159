"""Token copies sorted by expert, each expert's group padded to whole blocks: the layout the
fused MoE kernel (fused_moe_triton.py) walks, one block of rows per program, one expert each."""

from __future__ import annotations

from typing import Tuple

import torch


def moe_align(topk_ids: torch.Tensor, num_experts: int, block_m: int
              ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(sorted copy ids [P] int32, sentinel = number of copies in the padding; the expert of
    each BLOCK_M block [P / block_m] int32, -1 for blocks past the last expert's group).
    An id equal to num_experts (expert parallel: another rank's expert) is grouped last, in
    blocks marked -1, so the kernels skip those copies."""
    flat = topk_ids.reshape(-1).to(torch.int64)
    num_copies = flat.numel()
    num_experts += 1  # the group of "not here" copies, empty unless expert parallel
    # scatter_add, not bincount: bincount sizes its output from the data (a device-to-host
    # sync), which CUDA graph capture of a decode step refuses.
    counts = torch.zeros(num_experts, dtype=torch.int64, device=flat.device)
    counts.scatter_add_(0, flat, torch.ones_like(flat))
    padded = (counts + block_m - 1) // block_m * block_m
    padded_end = torch.cumsum(padded, 0)
    group_start = padded_end - padded
    count_start = torch.cumsum(counts, 0) - counts
    order = torch.argsort(flat, stable=True)
    expert_of = flat[order]
    rank = torch.arange(num_copies, device=flat.device) - count_start[expert_of]
    bound = num_copies + num_experts * (block_m - 1)
    bound = (bound + block_m - 1) // block_m * block_m
    sorted_ids = torch.full((bound,), num_copies, dtype=torch.int32, device=flat.device)
    sorted_ids[group_start[expert_of] + rank] = order.to(torch.int32)
    block_starts = torch.arange(0, bound, block_m, device=flat.device)
    block_expert = torch.searchsorted(padded_end, block_starts, right=True)
    block_expert = torch.where(block_expert < num_experts - 1, block_expert, -1).to(torch.int32)
    return sorted_ids, block_expert
