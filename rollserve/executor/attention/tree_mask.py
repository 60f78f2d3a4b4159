"""Tree attention masks (speculative tree drafts) as the torch paths apply them.

A request with ctx.tree_masks[i] = m ([E, M] bool) brings E new tokens whose keys are its
whole sequence (S = prefix + E): the first S - M keys (committed KV) are visible to every
new token, and the last M follow m (a node sees itself and its ancestors). For the target's
verify M = E; the draft's tree steps also mask earlier tree nodes already in the prefix.
The new tokens' positions are their own (kv_len + depth), not their row index, so a
sliding window is measured from ctx.positions.

Backends whose kernels take no custom mask (triton, flashinfer, batch_invariant) hand
tree forwards to the torch reference (registry.tree_mask_backend): the KV pool layout is
the same, so the reference gathers the paged KV and runs a masked SDPA on any device.
"""

from __future__ import annotations

from typing import Optional

import torch

from rollserve.core.forward_context import ForwardContext


def tree_mask_of(ctx: ForwardContext, i: int) -> Optional[torch.Tensor]:
    masks = ctx.tree_masks
    return None if masks is None else masks[i]


def dense_tree_mask(ctx: ForwardContext, i: int, start: int,
                    sliding_window: Optional[int] = None) -> Optional[torch.Tensor]:
    """Request i's [E, S] bool mask (new tokens' rows from packed row `start`), or None when
    it brings no tree."""
    m = tree_mask_of(ctx, i)
    if m is None:
        return None
    extend_len, tail = m.shape
    seq_len = ctx.prefix_lens_cpu[i] + extend_len
    mask = torch.cat([torch.ones(extend_len, seq_len - tail, dtype=torch.bool, device=m.device),
                      m], dim=1)
    if sliding_window is not None:  # committed keys sit at their index; tree nodes are ancestors
        query_pos = ctx.positions[start:start + extend_len, None]
        key_pos = torch.arange(seq_len, device=m.device)[None, :]
        mask &= (key_pos > query_pos - sliding_window) | (key_pos >= seq_len - tail)
    return mask
