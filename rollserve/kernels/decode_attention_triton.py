"""Paged decode attention: one query token per request against its slots in the KV pool.

Grouped-query attention: one program serves all query heads that share a KV head
(padded to 16 rows for tl.dot), so each K/V row is read once per group. The
sequence is split into `num_splits` ranges processed by separate programs
(split-K, as flash-decoding), so a batch of one still fills the GPU; a second
kernel merges the partial results by their log-sum-exp. Nothing here reads host
data, so the launch can be captured in a CUDA graph.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from rollserve.kernels.dispatch import dot_precision, next_power_of_2

MAX_SPLITS = 32


@triton.jit
def _decode_partial_kernel(q_ptr, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens,
                           part_out, part_lse, stride_qt, stride_qh, stride_kt, stride_kh,
                           stride_vt, stride_vh, stride_req, num_splits, scale, window,
                           GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr,
                           BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr):
    b = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    num_q_heads = tl.num_programs(1) * GROUP
    seq_len = tl.load(seq_lens + b).to(tl.int32)
    row = tl.load(req_pool_indices + b).to(tl.int64)
    kv_start = tl.where(window > 0, tl.maximum(seq_len - window, 0), 0)
    split_len = tl.cdiv(seq_len - kv_start, num_splits)
    lo = kv_start + split * split_len
    hi = tl.minimum(lo + split_len, seq_len)

    h = tl.arange(0, BLOCK_H)
    head = kv_head * GROUP + h
    mask_h = h < GROUP
    d = tl.arange(0, BLOCK_D)
    mask_d = d < HEAD_DIM
    scale = tl.cast(scale, tl.float32)  # a float64 scalar when launched from torch.compile'd code
    q = tl.load(q_ptr + b.to(tl.int64) * stride_qt + head[:, None] * stride_qh + d[None, :],
                mask=mask_h[:, None] & mask_d[None, :], other=0.0)
    m = tl.full([BLOCK_H], float("-inf"), tl.float32)
    denom = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
    for start in range(lo, hi, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        mask_n = n < hi
        slots = tl.load(req_to_token + row * stride_req + n, mask=mask_n, other=0).to(tl.int64)
        kv_mask = mask_n[:, None] & mask_d[None, :]
        k = tl.load(k_cache + slots[:, None] * stride_kt + kv_head * stride_kh + d[None, :],
                    mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale
        s = tl.where(mask_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        p = tl.exp(s - m_new[:, None])
        alpha = tl.exp(m - m_new)
        denom = denom * alpha + tl.sum(p, axis=1)
        v = tl.load(v_cache + slots[:, None] * stride_vt + kv_head * stride_vh + d[None, :],
                    mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m = m_new
    filled = denom > 0
    safe = tl.where(filled, denom, 1.0)
    out = acc / safe[:, None]
    lse = tl.where(filled, m + tl.log(safe), float("-inf"))
    base = (b.to(tl.int64) * num_q_heads + head) * num_splits + split
    tl.store(part_out + base[:, None] * HEAD_DIM + d[None, :], out,
             mask=mask_h[:, None] & mask_d[None, :])
    tl.store(part_lse + base, lse, mask=mask_h)


@triton.jit
def _decode_merge_kernel(part_out, part_lse, out_ptr, stride_ot, stride_oh, num_splits,
                         HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    b = tl.program_id(0)
    head = tl.program_id(1)
    num_q_heads = tl.num_programs(1)
    s = tl.arange(0, BLOCK_S)
    d = tl.arange(0, BLOCK_D)
    mask_s = s < num_splits
    mask_d = d < HEAD_DIM
    base = (b.to(tl.int64) * num_q_heads + head) * num_splits
    lse = tl.load(part_lse + base + s, mask=mask_s, other=float("-inf"))
    top = tl.max(lse, axis=0)
    weight = tl.where(mask_s, tl.exp(lse - top), 0.0)
    partial = tl.load(part_out + (base + s)[:, None] * HEAD_DIM + d[None, :],
                      mask=mask_s[:, None] & mask_d[None, :], other=0.0)
    out = tl.sum(partial * weight[:, None], axis=0) / tl.sum(weight, axis=0)
    tl.store(out_ptr + b.to(tl.int64) * stride_ot + head * stride_oh + d,
             out.to(out_ptr.dtype.element_ty), mask=mask_d)


def decode_num_splits(batch_size: int, num_kv_heads: int, num_sms: int = 132) -> int:
    """Enough programs to cover the SMs about twice, at most MAX_SPLITS."""
    wanted = (2 * num_sms + batch_size * num_kv_heads - 1) // max(1, batch_size * num_kv_heads)
    return max(1, min(MAX_SPLITS, next_power_of_2(wanted)))


def decode_attention_triton(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                            req_to_token: torch.Tensor, req_pool_indices: torch.Tensor,
                            seq_lens: torch.Tensor, scale: float, num_splits: int,
                            sliding_window: int | None = None, out: torch.Tensor | None = None
                            ) -> torch.Tensor:
    """q [B, Hq, D] (the newest token of each request, already in the pool) -> [B, Hq, D]."""
    batch, num_q_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[1]
    group = num_q_heads // num_kv_heads
    if out is None:
        out = torch.empty_like(q)
    if batch == 0:
        return out
    part_out = torch.empty(batch, num_q_heads, num_splits, head_dim, dtype=torch.float32,
                           device=q.device)
    part_lse = torch.empty(batch, num_q_heads, num_splits, dtype=torch.float32, device=q.device)
    block_d = max(16, next_power_of_2(head_dim))
    _decode_partial_kernel[(batch, num_kv_heads, num_splits)](
        q, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens, part_out, part_lse,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1),
        v_cache.stride(0), v_cache.stride(1), req_to_token.stride(0), num_splits, scale,
        sliding_window or 0, GROUP=group, HEAD_DIM=head_dim, BLOCK_H=max(16, next_power_of_2(group)),
        BLOCK_N=64 if head_dim <= 128 else 32, BLOCK_D=block_d, DOT_PRECISION=dot_precision(q.dtype),
        num_warps=4, num_stages=2)
    _decode_merge_kernel[(batch, num_q_heads)](
        part_out, part_lse, out, out.stride(0), out.stride(1), num_splits, HEAD_DIM=head_dim,
        BLOCK_S=next_power_of_2(num_splits), BLOCK_D=next_power_of_2(head_dim), num_warps=2)
    return out
