"""The Triton attention backend: KV store, then the decode or the extend kernel.

What the kernels need beyond the ForwardContext (split count, query-block list)
is built once per forward into `ctx.attn_metadata` (prepare_metadata); the CUDA graph
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


@dataclass
class TritonAttentionMetadata:
    is_decode: bool
    num_splits: int = 1  # decode: sequence ranges per (request, KV head)
    block_req: Optional[torch.Tensor] = None  # extend: request of each query block
    block_start: Optional[torch.Tensor] = None  # extend: its first new-token offset


def num_sms(device: torch.device) -> int:
    if device.type != "cuda":  # the Triton interpreter on CPU (tests)
        return 132
    return torch.cuda.get_device_properties(device).multi_processor_count


def decode_metadata(batch_size: int, num_kv_heads: int, device: torch.device) -> TritonAttentionMetadata:
    return TritonAttentionMetadata(True, decode_num_splits(batch_size, num_kv_heads, num_sms(device)))


def build_metadata(ctx: ForwardContext, num_kv_heads: int, device: torch.device) -> TritonAttentionMetadata:
    if all(n == 1 for n in ctx.extend_lens_cpu):
        return decode_metadata(ctx.batch_size, num_kv_heads, device)
    reqs, starts = query_blocks(ctx.extend_lens_cpu)
    both = host_to_device(torch.tensor([reqs, starts], dtype=torch.int32), device)
    return TritonAttentionMetadata(False, block_req=both[0], block_start=both[1])


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
    return extend_attention_triton(q, k_cache, v_cache, ctx.req_to_token, ctx.req_pool_indices,
                                   ctx.prefix_lens, ctx.extend_lens, ctx.extend_start_loc,
                                   meta.block_req, meta.block_start, scaling, sliding_window, out,
                                   causal)


class TritonBackend(AttentionBackend):
    name = "triton"
    supports_cuda_graph = True

    def prepare_metadata(self, ctx: ForwardContext) -> TritonAttentionMetadata:
        return build_metadata(ctx, self.num_kv_heads, self.device)

    def capture_metadata(self, batch_size: int, max_slots: int) -> TritonAttentionMetadata:
        return decode_metadata(batch_size, self.num_kv_heads, self.device)

    def forward(self, q, k, v, ctx, layer_id, scaling, sliding_window=None, causal=True, rope=None):
        if use_triton(q):
            return attention_triton(q, k, v, ctx, layer_id, scaling, sliding_window, causal, rope)
        return attention_torch(q, k, v, ctx, layer_id, scaling, sliding_window, causal, rope)
