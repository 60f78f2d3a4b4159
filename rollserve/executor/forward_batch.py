"""A ScheduleBatch as device tensors, moved in one host-to-device copy.

Every per-token and per-request integer the forward needs is packed into one
int64 array, pinned, and copied without blocking the host, so building step
i+1's inputs never waits for step i's kernels (overlap scheduling).

Decode inputs may name a token that is still being sampled on the GPU: a
negative id -(r + 1) stands for `future_tokens[r]`, the latest token sampled for
the request holding req_to_token row r (written right after each sampling).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import torch

from rollserve.core.forward_context import ForwardContext
from rollserve.core.batch import ScheduleBatch
from rollserve.core.draft_tree import ancestor_mask, depths
from rollserve.executor.attention.registry import tree_mask_backend
from rollserve.kernels.dispatch import host_to_device


@dataclass
class HostBatch:
    """Host-side integers of one forward (lists, so the CPU paths need no device reads)."""

    input_ids: np.ndarray  # [T]
    positions: np.ndarray  # [T]
    out_cache_loc: np.ndarray  # [T]
    req_pool_indices: List[int]
    prefix_lens: List[int]
    extend_lens: List[int]
    starts: List[int]  # first packed row of each request
    # per request None or a bool [extend_len, M] tree mask over its last M keys (tree drafts)
    tree_masks: Optional[List[Optional[torch.Tensor]]] = None

    @property
    def has_placeholders(self) -> bool:
        return bool(self.input_ids.size) and int(self.input_ids.min()) < 0


def placeholder_for(req_pool_idx: int) -> int:
    return -(req_pool_idx + 1)


def host_batch(batch: ScheduleBatch) -> HostBatch:
    entries = batch.entries
    extend_lens = [len(e.tokens) for e in entries]
    prefix_lens = [e.start for e in entries]
    starts, offset = [], 0
    for n in extend_lens:
        starts.append(offset)
        offset += n
    input_ids = np.fromiter((t for e in entries for t in e.tokens), dtype=np.int64,
                            count=sum(extend_lens))
    trees = any(e.tree_parents is not None for e in entries)
    if all(n == 1 for n in extend_lens):
        positions = np.asarray(prefix_lens, dtype=np.int64)
    elif trees:  # a tree row sits at kv_len + its depth
        positions = np.concatenate([
            e.start + (np.asarray(depths(e.tree_parents), dtype=np.int64) if e.tree_parents
                       is not None else np.arange(len(e.tokens), dtype=np.int64)) for e in entries])
    else:
        positions = np.concatenate([np.arange(e.start, e.start + len(e.tokens), dtype=np.int64)
                                    for e in entries])
    out_cache_loc = torch.cat([e.slots for e in entries]).numpy().astype(np.int64, copy=False)
    masks = [ancestor_mask(e.tree_parents) if e.tree_parents is not None and len(e.tokens) > 1
             else None for e in entries] if trees else None
    return HostBatch(input_ids, positions, out_cache_loc, [e.req.req_pool_idx for e in entries],
                     prefix_lens, extend_lens, starts, masks)


def resolve_placeholders(input_ids: torch.Tensor, future_tokens: torch.Tensor) -> torch.Tensor:
    """Negative ids -(r + 1) replaced by future_tokens[r]; other ids kept."""
    return torch.where(input_ids < 0, future_tokens[(-input_ids - 1).clamp_(min=0)], input_ids)


def build_context(host: HostBatch, device: torch.device, future_tokens: torch.Tensor,
                  req_to_token: torch.Tensor, kv_pool, attn_backend) -> tuple:
    """(ForwardContext, input_ids [T] on the device) for one eager forward over kv_pool."""
    num_tokens, batch = host.input_ids.size, len(host.extend_lens)
    seq_lens = [p + n for p, n in zip(host.prefix_lens, host.extend_lens)]
    packed = np.concatenate([host.input_ids, host.positions, host.out_cache_loc,
                             np.asarray(host.req_pool_indices + host.prefix_lens + host.extend_lens
                                        + seq_lens + host.starts, dtype=np.int64)])
    device_ints = host_to_device(torch.from_numpy(packed), device)
    tokens = device_ints[:3 * num_tokens].view(3, num_tokens)
    per_req = device_ints[3 * num_tokens:].view(5, batch)
    input_ids = tokens[0]
    if host.has_placeholders:
        input_ids = resolve_placeholders(input_ids, future_tokens)
    ctx = ForwardContext(
        positions=tokens[1], out_cache_loc=tokens[2], req_pool_indices=per_req[0],
        req_to_token=req_to_token, prefix_lens=per_req[1], extend_lens=per_req[2],
        seq_lens=per_req[3], extend_start_loc=per_req[4], kv_pool=kv_pool,
        prefix_lens_cpu=host.prefix_lens, extend_lens_cpu=host.extend_lens,
        attn_backend=attn_backend)
    if host.tree_masks is not None and any(m is not None for m in host.tree_masks):
        ctx.tree_masks = [None if m is None else m.to(device, non_blocking=True)
                          for m in host.tree_masks]
        ctx.attn_backend = attn_backend = tree_mask_backend(attn_backend)
    ctx.attn_metadata = attn_backend.prepare_metadata(ctx)
    return ctx, input_ids
