"""Rotary embedding of q and k in one launch, in place (rotate-half layout).

Products and differences are rounded to the input dtype in the same order as
`apply_rotary_torch`, so bf16 results match the reference.
"""

from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl

from rollserve.kernels.dispatch import next_power_of_2


@triton.jit
def _rotate_heads(x_ptr, stride_t, stride_h, token, heads, half, cos, sin,
                  BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr):
    h = tl.arange(0, BLOCK_H)[:, None]
    d = tl.arange(0, BLOCK_HALF)[None, :]
    mask = (h < heads) & (d < half)
    ptr = x_ptr + token.to(tl.int64) * stride_t + h * stride_h + d
    x1 = tl.load(ptr, mask=mask, other=0.0)
    x2 = tl.load(ptr + half, mask=mask, other=0.0)
    dtype = x1.dtype
    c = cos.to(dtype).to(tl.float32)
    s = sin.to(dtype).to(tl.float32)
    a1, a2 = x1.to(tl.float32), x2.to(tl.float32)
    o1 = ((a1 * c).to(dtype).to(tl.float32) - (a2 * s).to(dtype).to(tl.float32)).to(dtype)
    o2 = ((a2 * c).to(dtype).to(tl.float32) + (a1 * s).to(dtype).to(tl.float32)).to(dtype)
    tl.store(ptr, o1, mask=mask)
    tl.store(ptr + half, o2, mask=mask)


@triton.jit
def _rotary_kernel(q_ptr, k_ptr, cos_ptr, sin_ptr, q_heads, k_heads, half,
                   stride_qt, stride_qh, stride_kt, stride_kh, stride_cos,
                   BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr, BLOCK_HALF: tl.constexpr):
    token = tl.program_id(0)
    d = tl.arange(0, BLOCK_HALF)[None, :]
    cos = tl.load(cos_ptr + token.to(tl.int64) * stride_cos + d, mask=d < half, other=0.0)
    sin = tl.load(sin_ptr + token.to(tl.int64) * stride_cos + d, mask=d < half, other=0.0)
    _rotate_heads(q_ptr, stride_qt, stride_qh, token, q_heads, half, cos, sin, BLOCK_HQ, BLOCK_HALF)
    _rotate_heads(k_ptr, stride_kt, stride_kh, token, k_heads, half, cos, sin, BLOCK_HK, BLOCK_HALF)


def apply_rotary_triton(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
                        ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rotates q [T, Hq, D] and k [T, Hkv, D] in place and returns them; cos/sin [T, D/2] float32."""
    if q.stride(-1) != 1 or k.stride(-1) != 1 or cos.stride(-1) != 1 or sin.stride() != cos.stride():
        from rollserve.kernels.rotary import apply_rotary_torch

        return apply_rotary_torch(q, cos, sin), apply_rotary_torch(k, cos, sin)
    tokens, q_heads, dim = q.shape
    if tokens:
        _rotary_kernel[(tokens,)](q, k, cos, sin, q_heads, k.shape[1], dim // 2,
                                  q.stride(0), q.stride(1), k.stride(0), k.stride(1), cos.stride(0),
                                  BLOCK_HQ=next_power_of_2(q_heads), BLOCK_HK=next_power_of_2(k.shape[1]),
                                  BLOCK_HALF=next_power_of_2(dim // 2), num_warps=4)
    return q, k
