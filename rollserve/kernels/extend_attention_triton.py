"""Extend (prefill) attention over the KV pool: each request's new tokens attend causally
to themselves and to its cached prefix.

The new tokens' K/V are already stored in the pool, so one loop over the request's
slots (req_to_token) covers prefix and new tokens alike; the causal mask is
key position <= query position. Programs are (query block, query head); the list
of query blocks is built on the host from the extend lengths, so no program idles.
"""

from __future__ import annotations

from typing import List, Tuple

import torch
import triton
import triton.language as tl

from rollserve.kernels.dispatch import dot_precision, next_power_of_2

BLOCK_M = 64


@triton.jit
def attend_tile(q, acc, m, denom, k_cache, v_cache, req_to_token, row, kv_head, n, mask_n,
                visible, stride_kt, stride_kh, stride_vt, stride_vh, stride_req, scale,
                HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """One online-softmax step of the query rows over keys n of request row `row` (mask_n: in
    range; visible: [M, N]); also the tree kernel's (tree_attention_triton.py)."""
    d = tl.arange(0, BLOCK_D)
    kv_mask = mask_n[:, None] & (d < HEAD_DIM)[None, :]
    slots = tl.load(req_to_token + row * stride_req + n, mask=mask_n, other=0).to(tl.int64)
    k = tl.load(k_cache + slots[:, None] * stride_kt + kv_head * stride_kh + d[None, :],
                mask=kv_mask, other=0.0)
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale
    s = tl.where(visible, s, float("-inf"))
    m_new = tl.maximum(m, tl.max(s, axis=1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows that saw no key yet
    p = tl.exp(s - m_safe[:, None])
    alpha = tl.exp(m - m_safe)
    denom = denom * alpha + tl.sum(p, axis=1)
    v = tl.load(v_cache + slots[:, None] * stride_vt + kv_head * stride_vh + d[None, :],
                mask=kv_mask, other=0.0)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return acc, m_new, denom


# The index tensors are often views into one packed block at batch-dependent offsets: their
# 16-byte alignment must not pick a compiled variant, or new batches compile mid-run (seen on
# an H100: a 0.49 s stall inside a prefill step of the 8B ShareGPT-like run).
@triton.jit(do_not_specialize_on_alignment=["req_pool_indices", "prefix_lens", "extend_lens",
                                            "extend_start_loc", "block_req", "block_start"])
def _extend_kernel(q_ptr, out_ptr, k_cache, v_cache, req_to_token, req_pool_indices, prefix_lens,
                   extend_lens, extend_start_loc, block_req, block_start,
                   stride_qt, stride_qh, stride_ot, stride_oh, stride_kt, stride_kh,
                   stride_vt, stride_vh, stride_req, scale, window,
                   GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
                   DOT_PRECISION: tl.constexpr):
    blk = tl.program_id(0)
    head = tl.program_id(1)
    kv_head = head // GROUP
    b = tl.load(block_req + blk)
    m0 = tl.load(block_start + blk)
    prefix = tl.load(prefix_lens + b).to(tl.int32)
    extend = tl.load(extend_lens + b).to(tl.int32)
    first_row = tl.load(extend_start_loc + b).to(tl.int64)
    row = tl.load(req_pool_indices + b).to(tl.int64)

    offs_m = m0 + tl.arange(0, BLOCK_M)
    mask_m = offs_m < extend
    q_pos = prefix + offs_m
    d = tl.arange(0, BLOCK_D)
    mask_d = d < HEAD_DIM
    scale = tl.cast(scale, tl.float32)  # a float64 scalar when launched from torch.compile'd code
    q = tl.load(q_ptr + (first_row + offs_m)[:, None] * stride_qt + head * stride_qh + d[None, :],
                mask=mask_m[:, None] & mask_d[None, :], other=0.0)

    hi = prefix + extend
    if CAUSAL:
        hi = tl.minimum(hi, prefix + m0 + BLOCK_M)
    lo = tl.where(window > 0, tl.maximum(prefix + m0 - window + 1, 0), 0)
    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    denom = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start in range(lo, hi, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        mask_n = n < hi
        visible = mask_n[None, :]
        if CAUSAL:
            visible = visible & (n[None, :] <= q_pos[:, None]) & (
                (window <= 0) | (n[None, :] > q_pos[:, None] - window))
        acc, m, denom = attend_tile(q, acc, m, denom, k_cache, v_cache, req_to_token, row, kv_head,
                                    n, mask_n, visible, stride_kt, stride_kh, stride_vt, stride_vh,
                                    stride_req, scale, HEAD_DIM, BLOCK_D, DOT_PRECISION)
    out = acc / tl.where(denom > 0, denom, 1.0)[:, None]
    tl.store(out_ptr + (first_row + offs_m)[:, None] * stride_ot + head * stride_oh + d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_d[None, :])


def query_blocks(extend_lens: List[int], block_m: int = BLOCK_M) -> Tuple[List[int], List[int]]:
    """(request index, first new-token offset) of every BLOCK_M-row query block."""
    reqs, starts = [], []
    for i, n in enumerate(extend_lens):
        for start in range(0, n, block_m):
            reqs.append(i)
            starts.append(start)
    return reqs, starts


def extend_attention_triton(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                            req_to_token: torch.Tensor, req_pool_indices: torch.Tensor,
                            prefix_lens: torch.Tensor, extend_lens: torch.Tensor,
                            extend_start_loc: torch.Tensor, block_req: torch.Tensor,
                            block_start: torch.Tensor, scale: float,
                            sliding_window: int | None = None, out: torch.Tensor | None = None,
                            causal: bool = True) -> torch.Tensor:
    """q [T, Hq, D] packed new tokens -> [T, Hq, D]. block_req/block_start from query_blocks().
    causal=False (encoders): every new token sees the whole sequence."""
    num_q_heads, head_dim = q.shape[1], q.shape[2]
    group = num_q_heads // k_cache.shape[1]
    if out is None:
        out = torch.empty_like(q)
    num_blocks = block_req.shape[0]
    if num_blocks == 0:
        return out
    block_n = 64 if head_dim <= 64 else 32
    _extend_kernel[(num_blocks, num_q_heads)](
        q, out, k_cache, v_cache, req_to_token, req_pool_indices, prefix_lens, extend_lens,
        extend_start_loc, block_req, block_start, q.stride(0), q.stride(1), out.stride(0),
        out.stride(1), k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1),
        req_to_token.stride(0), scale, sliding_window or 0, GROUP=group, HEAD_DIM=head_dim,
        BLOCK_M=BLOCK_M, BLOCK_N=block_n, BLOCK_D=max(16, next_power_of_2(head_dim)),
        CAUSAL=causal, DOT_PRECISION=dot_precision(q.dtype), num_warps=4, num_stages=2)
    return out
