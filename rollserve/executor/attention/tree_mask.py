"""Tree attention masks (speculative tree drafts) as the torch paths apply them.

A request with ctx.tree_masks[i] = m ([E, M] bool) brings E new tokens whose keys are its
whole sequence (S = prefix + E): the first S - M keys (committed KV) are visible to every
new token, and the last M follow m (a node sees itself and its ancestors). For the target's
verify M = E; the draft's tree steps also mask earlier tree nodes already in the prefix.
The new tokens' positions are their own (kv_len + depth), not their row index, so a
sliding window is measured from ctx.positions.

Who applies them: torch_native (the reference: gathers each request's paged KV, masked
SDPA); triton (its tree kernel, kernels/tree_attention_triton.py, which reads the [E, M]
masks as they are); flashinfer (its prefill wrapper's custom_mask: the dense [E, S] masks
below, flat_custom_mask); mla (its torch path over the latent pool, dense masks per
request; with --disable-mla, MLA models go through the ordinary backend). batch_invariant's
kernel takes no mask, so it hands tree forwards to the torch reference
(registry.tree_mask_backend) over the same pool.
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


def flat_custom_mask(ctx: ForwardContext, sliding_window: Optional[int] = None) -> torch.Tensor:
    """Every request's [E, S] visibility (dense_tree_mask; causal by index for a request
    without a tree), window included, flattened row-major and concatenated: flashinfer's
    custom_mask."""
    parts, start = [], 0
    device = ctx.positions.device
    for i, (prefix_len, extend_len) in enumerate(zip(ctx.prefix_lens_cpu, ctx.extend_lens_cpu)):
        mask = dense_tree_mask(ctx, i, start, sliding_window)
        if mask is None:
            query_pos = torch.arange(prefix_len, prefix_len + extend_len, device=device)[:, None]
            key_pos = torch.arange(prefix_len + extend_len, device=device)[None, :]
            mask = key_pos <= query_pos
            if sliding_window is not None:
                mask &= key_pos > query_pos - sliding_window
        parts.append(mask.reshape(-1))
        start += extend_len
    return torch.cat(parts)
