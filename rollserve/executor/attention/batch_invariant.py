"""Batch-invariant attention (--enable-deterministic-inference; kernels/batch_invariant.py).

Every new token attends on its own: its query against exactly the keys it sees (positions
0..p of its sequence, or the sliding window's last W), gathered into a tensor of that
length alone. The shapes of each product, hence the order of every sum, depend only on
the token's position, not on its batch mates, on how its prompt was chunked or on how
much of it came from the prefix cache. Plain torch (matmul, softmax in fp32) on any
device; slow by design: one small product per token and layer.
"""

from __future__ import annotations

from typing import Optional

import torch

from rollserve.core.forward_context import ForwardContext
from rollserve.executor.attention.base import AttentionBackend
from rollserve.executor.attention.torch_native import _gather
from rollserve.kernels.rotary import rope_store_torch


def attention_per_token(q, k, v, ctx: ForwardContext, layer_id: int, scaling: float,
                        sliding_window: Optional[int] = None, causal: bool = True, rope=None):
    if rope is None:
        ctx.kv_pool.store(layer_id, ctx.out_cache_loc, k, v)
    else:
        q = rope_store_torch(q, k, v, rope, ctx.kv_pool, layer_id, ctx.out_cache_loc)
    k_buffer, v_buffer = ctx.kv_pool.kv(layer_id)
    num_kv_heads, head_dim = k_buffer.shape[1], k_buffer.shape[2]
    out = torch.empty_like(q)
    row = 0
    for i, extend_len in enumerate(ctx.extend_lens_cpu):
        prefix_len = ctx.prefix_lens_cpu[i]
        seq_len = prefix_len + extend_len
        slots = ctx.req_to_token[ctx.req_pool_indices[i], :seq_len].long()
        for j in range(extend_len):
            end = prefix_len + j + 1 if causal else seq_len
            start = max(0, end - sliding_window) if sliding_window is not None else 0
            keys = _gather(k_buffer, slots[start:end]).transpose(0, 1).float()  # [Hkv, L, D]
            values = _gather(v_buffer, slots[start:end]).transpose(0, 1).float()
            query = q[row + j].view(num_kv_heads, -1, head_dim).float()  # [Hkv, G, D]
            probs = torch.softmax(torch.matmul(query, keys.transpose(1, 2)) * scaling, dim=-1)
            out[row + j] = torch.matmul(probs, values).reshape(-1, head_dim).to(out.dtype)
        row += extend_len
    return out


class BatchInvariantBackend(AttentionBackend):
    name = "batch_invariant"

    def forward(self, q, k, v, ctx, layer_id, scaling, sliding_window=None, causal=True, rope=None):
        return attention_per_token(q, k, v, ctx, layer_id, scaling, sliding_window, causal, rope)
