"""Expert parallelism's token dispatch and combine over torch.distributed all-to-all
(--moe-a2a-backend deepep under --enable-dp-attention with --ep-size equal to --tp-size).

Each rank routes only its own tokens. Every (token, expert) copy goes to the rank that holds
that expert whole (rank r holds experts [r * E / P, (r + 1) * E / P), layers/moe_parallel.py):

1. the copies are sorted by expert id (so by owner rank too), and one small all-to-all tells
   each owner how many rows of each of its experts are coming from each rank;
2. a second all-to-all moves the rows' hidden states; the owner knows each row's expert
   from those counts (no ids travel), and runs its experts over all the rows it received,
   grouped by expert (the fused MoE entry point, one expert per row, weight 1);
3. a third all-to-all (the first's sizes reversed) brings each row's output back to the
   rank of its token, where the copies are put back in (token, k) order and summed with the
   top-k weights (the weights never leave the token's rank).

Compared with DP attention's all-gather path (every rank routes every rank's tokens and one
all-reduce adds the full hidden states of all of them), a rank moves only the rows of its
own tokens' copies that go elsewhere and computes only the copies routed to its experts.
A rank with no tokens (ModelRunner.idle_forward) sends nothing and still serves the copies
it receives; an expert that receives nothing is skipped by the kernel.
"""

from __future__ import annotations

from typing import Callable

import torch

from rollserve.executor.parallel_state import all_to_all_counts, all_to_all_rows

# runs this rank's experts: (rows [N, H], local expert id of each row [N]) -> [N, H]
LocalExperts = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def dispatch_combine(x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor, num_experts: int,
                     num_ranks: int, run_local: LocalExperts) -> torch.Tensor:
    """The routed experts' output for this rank's tokens `x` [T, H] (T may be 0), given their
    top-k `weights` [T, K] (x's dtype) and global expert `ids` [T, K]. Every rank of the group
    must call it for the same layer, with the same `num_experts` and `num_ranks`."""
    num_tokens, top_k = ids.shape
    per_rank = num_experts // num_ranks
    flat_ids = ids.reshape(-1)
    order = torch.argsort(flat_ids, stable=True)  # by expert, hence by owner rank
    # rows of each expert this rank sends: [P * E/P], chunk r for rank r's experts
    send_per_expert = torch.bincount(flat_ids, minlength=num_experts)
    recv_per_expert = all_to_all_counts(send_per_expert)  # [P * E/P], chunk r from rank r
    # one host copy of both: the row exchanges need their split sizes on the host
    both = torch.stack([send_per_expert, recv_per_expert]).view(2, num_ranks, per_rank).cpu()
    send = both[0].sum(dim=1).tolist()
    recv = both[1].sum(dim=1).tolist()

    rows = all_to_all_rows(x[order // top_k], send, recv)
    # the received rows are in (source rank, expert) order: each one's local expert id
    local_ids = torch.arange(per_rank, device=x.device).repeat(num_ranks)
    local_ids = torch.repeat_interleave(local_ids, both[1].reshape(-1).to(x.device),
                                        output_size=rows.shape[0])
    done = run_local(rows, local_ids) if rows.shape[0] else rows
    back = all_to_all_rows(done, recv, send)  # in the order this rank sent them

    copies = torch.empty_like(back)
    copies[order] = back
    combined = copies.view(num_tokens, top_k, x.shape[1]) * weights.unsqueeze(-1)
    return combined.sum(dim=1)
