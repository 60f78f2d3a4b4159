"""The Triton attention backend: KV store, then the decode or the extend kernel, or for a
forward carrying tree masks (speculative tree drafts, attention/tree_mask.py) the tree kernel.

What the kernels need beyond the ForwardContext (split count, query-block list, packed tree
masks) is built once per forward into `ctx.attn_metadata` (prepare_metadata); the CUDA graph
runner takes it from capture_metadata for the decode graphs it captures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from rollserve.core.forward_context import ForwardContext
from rollserve.executor.attention.base import AttentionBackend
from rollserve.executor.attention.torch_native import attention_torch
from rollserve.kernels.dispatch import host_to_device, use_triton
from rollserve.kernels.decode_attention_triton import decode_attention_triton, decode_num_splits
from rollserve.kernels.extend_attention_triton import extend_attention_triton, query_blocks
from rollserve.kernels.kv_store_triton import kv_store_triton
from rollserve.kernels.rope_store_triton import rope_store_triton
from rollserve.kernels.rotary import RopeInputs
from rollserve.kernels.tree_attention_triton import (PackedTrees, pack_tree_masks,
                                                     tree_attention_triton, tree_block_m,
                                                     tree_num_splits, tree_row_blocks)


@dataclass
class TritonAttentionMetadata:
    is_decode: bool
    num_splits: int = 1  # decode: sequence ranges per (request, KV head)
    block_req: Optional[torch.Tensor] = None  # extend: request of each query block
    block_start: Optional[torch.Tensor] = None  # extend: its first new-token offset
    tree: Optional["TreeForward"] = None  # a forward carrying tree masks


class TreeForward:
    """One forward's packed tree masks, and per query-head group (known at the first layer)
    the tree kernel's row blocks and split count."""

    def __init__(self, ctx: ForwardContext, device: torch.device):
        lens, offsets, masks = pack_tree_masks(ctx.tree_masks, ctx.extend_lens_cpu, device)
        both = host_to_device(torch.tensor(offsets + lens, dtype=torch.int64), device)
        n = len(lens)
        self.trees = PackedTrees(both[n:].to(torch.int32), both[:n], masks)
        self.extend_lens = ctx.extend_lens_cpu
        self.max_seq_len = max(p + e for p, e in zip(ctx.prefix_lens_cpu, ctx.extend_lens_cpu))
        self.device = device
        self.plans: dict = {}

    def plan(self, group: int, num_kv_heads: int) -> tuple:
        """(block_req, block_start, block_m, num_splits) for `group` query heads per KV head."""
        if group not in self.plans:
            block_m = tree_block_m(self.extend_lens, group)
            reqs, starts = tree_row_blocks(self.extend_lens, group, block_m)
            both = host_to_device(torch.tensor([reqs, starts], dtype=torch.int32), self.device)
            splits = tree_num_splits(len(reqs), num_kv_heads, self.max_seq_len, num_sms(self.device))
            self.plans[group] = (both[0], both[1], block_m, splits)
        return self.plans[group]


def num_sms(device: torch.device) -> int:
    if device.type != "cuda":  # the Triton interpreter on CPU (tests)
        return 132
    return torch.cuda.get_device_properties(device).multi_processor_count


def decode_metadata(batch_size: int, num_kv_heads: int, device: torch.device) -> TritonAttentionMetadata:
    return TritonAttentionMetadata(True, decode_num_splits(batch_size, num_kv_heads, num_sms(device)))


def build_metadata(ctx: ForwardContext, num_kv_heads: int, device: torch.device) -> TritonAttentionMetadata:
    has_tree = ctx.tree_masks is not None and any(m is not None for m in ctx.tree_masks)
    if all(n == 1 for n in ctx.extend_lens_cpu) and not has_tree:
        return decode_metadata(ctx.batch_size, num_kv_heads, device)
    reqs, starts = query_blocks(ctx.extend_lens_cpu)
    both = host_to_device(torch.tensor([reqs, starts], dtype=torch.int32), device)
    return TritonAttentionMetadata(False, block_req=both[0], block_start=both[1],
                                   tree=TreeForward(ctx, device) if has_tree else None)


def store_kv_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: ForwardContext,
                    layer_id: int, rope: Optional[RopeInputs] = None) -> torch.Tensor:
    """k, v into the pool at ctx.out_cache_loc; with `rope`, one launch also (norms and) rotates
    q in place and k before storing it. Returns q."""
    k_cache, v_cache = ctx.kv_pool.kv(layer_id)
    if rope is None:
        kv_store_triton(k_cache, v_cache, ctx.out_cache_loc, k, v)
        return q
    return rope_store_triton(q, k, v, rope, k_cache, v_cache, ctx.out_cache_loc)


def attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: ForwardContext,
                     layer_id: int, scaling: float, sliding_window: Optional[int] = None,
                     causal: bool = True, rope: Optional[RopeInputs] = None) -> torch.Tensor:
    if not causal and sliding_window is not None:
        raise ValueError("a sliding window needs causal attention")
    q = store_kv_triton(q, k, v, ctx, layer_id, rope)
    k_cache, v_cache = ctx.kv_pool.kv(layer_id)
    meta = ctx.attn_metadata
    if meta is None:
        meta = ctx.attn_metadata = build_metadata(ctx, k_cache.shape[1], q.device)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if meta.is_decode:
        return decode_attention_triton(q, k_cache, v_cache, ctx.req_to_token, ctx.req_pool_indices,
                                       ctx.seq_lens, scaling, meta.num_splits, sliding_window, out)
    if meta.tree is not None and causal:  # non-causal attention ignores trees, as the reference
        group = q.shape[1] // k_cache.shape[1]
        block_req, block_start, block_m, splits = meta.tree.plan(group, k_cache.shape[1])
        return tree_attention_triton(q, k_cache, v_cache, ctx.req_to_token, ctx.req_pool_indices,
                                     ctx.prefix_lens, ctx.extend_lens, ctx.extend_start_loc,
                                     ctx.positions, meta.tree.trees, block_req, block_start,
                                     block_m, scaling, splits, sliding_window, out)
    return extend_attention_triton(q, k_cache, v_cache, ctx.req_to_token, ctx.req_pool_indices,
                                   ctx.prefix_lens, ctx.extend_lens, ctx.extend_start_loc,
                                   meta.block_req, meta.block_start, scaling, sliding_window, out,
                                   causal)


class TritonBackend(AttentionBackend):
    name = "triton"
    supports_cuda_graph = True
    supports_tree_mask = True  # the tree kernel (kernels/tree_attention_triton.py)
    supports_verify_cuda_graph = True

    def prepare_metadata(self, ctx: ForwardContext) -> TritonAttentionMetadata:
        return build_metadata(ctx, self.num_kv_heads, self.device)

    def capture_metadata(self, batch_size: int, max_slots: int) -> TritonAttentionMetadata:
        return decode_metadata(batch_size, self.num_kv_heads, self.device)

    def capture_verify_metadata(self, ctx: ForwardContext) -> TritonAttentionMetadata:
        # the extend kernel's query blocks depend on the extend lengths alone (fixed per graph);
        # the lengths and slots it reads are the graph's device tensors
        return build_metadata(ctx, self.num_kv_heads, self.device)

    def forward(self, q, k, v, ctx, layer_id, scaling, sliding_window=None, causal=True, rope=None):
        if use_triton(q):
            return attention_triton(q, k, v, ctx, layer_id, scaling, sliding_window, causal, rope)
        return attention_torch(q, k, v, ctx, layer_id, scaling, sliding_window, causal, rope)
