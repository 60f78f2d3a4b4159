"""Writes the new tokens' K and V into the KV pool at their slots, one launch for both."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit(do_not_specialize_on_alignment=["loc_ptr"])  # slots: a view at any offset
def _kv_store_kernel(k_ptr, v_ptr, k_cache, v_cache, loc_ptr, stride_kt, stride_vt, row_size,
                     BLOCK: tl.constexpr):
    token = tl.program_id(0)
    slot = tl.load(loc_ptr + token).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < row_size
    k = tl.load(k_ptr + token.to(tl.int64) * stride_kt + cols, mask=mask)
    v = tl.load(v_ptr + token.to(tl.int64) * stride_vt + cols, mask=mask)
    tl.store(k_cache + slot * row_size + cols, k.to(k_cache.dtype.element_ty), mask=mask)
    tl.store(v_cache + slot * row_size + cols, v.to(v_cache.dtype.element_ty), mask=mask)


def _rows_contiguous(x: torch.Tensor) -> bool:
    """[T, H, D] whose (H, D) block is dense: each token's row is one run of memory."""
    return x.stride(-1) == 1 and x.stride(-2) == x.shape[-1]


def kv_store_triton(k_cache: torch.Tensor, v_cache: torch.Tensor, loc: torch.Tensor,
                    k: torch.Tensor, v: torch.Tensor) -> None:
    """k_cache/v_cache [slots, Hkv, D] (contiguous); k, v [T, Hkv, D]; loc [T] slot ids."""
    if not _rows_contiguous(k):
        k = k.contiguous()
    if not _rows_contiguous(v):
        v = v.contiguous()
    tokens = k.shape[0]
    row_size = k.shape[1] * k.shape[2]
    if tokens:
        block = triton.next_power_of_2(row_size)  # a token's whole K (or V) row in one block
        _kv_store_kernel[(tokens,)](k, v, k_cache, v_cache, loc, k.stride(0), v.stride(0), row_size,
                                    BLOCK=block, num_warps=min(8, max(1, block // 512)))
