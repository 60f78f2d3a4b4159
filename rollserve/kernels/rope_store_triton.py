"""One launch per attention layer for what comes between the qkv projection and attention:
(Qwen3's per-head q/k RMSNorm), the rotary embedding of q (in place) and k, and the
store of the rotated k and of v into the KV pool at the new tokens' slots.

Rounding follows the torch references step by step (`rms_norm_torch`: float32 statistics,
normalized value rounded before the weight multiply; `apply_rotary_torch`: each product
and the difference/sum rounded to the input dtype), so bf16 results match them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from rollserve.kernels.dispatch import next_power_of_2, pdl_launch, use_pdl
from rollserve.kernels.pdl_triton import launch_dependents, wait_prior
from rollserve.kernels.rotary import RopeInputs


@triton.jit
def _norm_rotate_heads(x_ptr, stride_t, stride_h, token, heads, half, cos, sin, w_ptr, eps,
                       HAS_NORM: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr):
    """Loads a token's heads [BLOCK_H, D] as two halves; returns them normed and rotated."""
    h = tl.arange(0, BLOCK_H)[:, None]
    d = tl.arange(0, BLOCK_HALF)[None, :]
    mask = (h < heads) & (d < half)
    ptr = x_ptr + token.to(tl.int64) * stride_t + h * stride_h + d
    x1 = tl.load(ptr, mask=mask, other=0.0)
    x2 = tl.load(ptr + half, mask=mask, other=0.0)
    dtype = x1.dtype
    a1, a2 = x1.to(tl.float32), x2.to(tl.float32)
    if HAS_NORM:
        mean_square = tl.sum(a1 * a1 + a2 * a2, axis=1) / (2 * half)
        rstd = (1.0 / tl.sqrt(mean_square + eps))[:, None]
        w1 = tl.load(w_ptr + d, mask=d < half, other=0.0).to(tl.float32)
        w2 = tl.load(w_ptr + half + d, mask=d < half, other=0.0).to(tl.float32)
        a1 = (w1 * (a1 * rstd).to(dtype).to(tl.float32)).to(dtype).to(tl.float32)
        a2 = (w2 * (a2 * rstd).to(dtype).to(tl.float32)).to(dtype).to(tl.float32)
    c = cos.to(dtype).to(tl.float32)
    s = sin.to(dtype).to(tl.float32)
    o1 = ((a1 * c).to(dtype).to(tl.float32) - (a2 * s).to(dtype).to(tl.float32)).to(dtype)
    o2 = ((a2 * c).to(dtype).to(tl.float32) + (a1 * s).to(dtype).to(tl.float32)).to(dtype)
    return o1, o2, ptr, mask


@triton.jit(do_not_specialize_on_alignment=["loc_ptr"])  # slots: a view at any offset
def _rope_store_kernel(q_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, q_norm_ptr, k_norm_ptr, eps,
                       k_cache, v_cache, loc_ptr, q_heads, kv_heads, half, v_dim,
                       stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_cos,
                       HAS_NORM: tl.constexpr, BLOCK_HQ: tl.constexpr, BLOCK_HKV: tl.constexpr,
                       BLOCK_HALF: tl.constexpr, BLOCK_DV: tl.constexpr, USE_PDL: tl.constexpr):
    token = tl.program_id(0)
    launch_dependents(USE_PDL)
    wait_prior(USE_PDL)
    slot = tl.load(loc_ptr + token).to(tl.int64)
    d = tl.arange(0, BLOCK_HALF)[None, :]
    cos = tl.load(cos_ptr + token.to(tl.int64) * stride_cos + d, mask=d < half, other=0.0)
    sin = tl.load(sin_ptr + token.to(tl.int64) * stride_cos + d, mask=d < half, other=0.0)

    q1, q2, q_ptrs, q_mask = _norm_rotate_heads(q_ptr, stride_qt, stride_qh, token, q_heads, half,
                                                cos, sin, q_norm_ptr, eps, HAS_NORM, BLOCK_HQ,
                                                BLOCK_HALF)
    tl.store(q_ptrs, q1, mask=q_mask)
    tl.store(q_ptrs + half, q2, mask=q_mask)

    k1, k2, _, k_mask = _norm_rotate_heads(k_ptr, stride_kt, stride_kh, token, kv_heads, half,
                                           cos, sin, k_norm_ptr, eps, HAS_NORM, BLOCK_HKV,
                                           BLOCK_HALF)
    h = tl.arange(0, BLOCK_HKV)[:, None]
    k_out = k_cache + slot * (kv_heads * 2 * half) + h * (2 * half) + d
    tl.store(k_out, k1.to(k_cache.dtype.element_ty), mask=k_mask)
    tl.store(k_out + half, k2.to(k_cache.dtype.element_ty), mask=k_mask)

    dv = tl.arange(0, BLOCK_DV)[None, :]
    v_mask = (h < kv_heads) & (dv < v_dim)
    v = tl.load(v_ptr + token.to(tl.int64) * stride_vt + h * stride_vh + dv, mask=v_mask)
    tl.store(v_cache + slot * (kv_heads * v_dim) + h * v_dim + dv,
             v.to(v_cache.dtype.element_ty), mask=v_mask)


def _supported(q, k, v, rope: RopeInputs, k_cache, v_cache) -> bool:
    """Layouts and dtypes the kernel handles; anything else takes the composed references."""
    last_dims_dense = all(t.stride(-1) == 1 for t in (q, k, v, rope.cos))
    caches_dense = k_cache.is_contiguous() and v_cache.is_contiguous()
    norms = (rope.q_norm_weight, rope.k_norm_weight)
    norms_ok = all(w is None or (w.dtype == q.dtype and w.is_contiguous()) for w in norms)
    return (last_dims_dense and caches_dense and norms_ok and rope.sin.stride() == rope.cos.stride()
            and k.dtype == q.dtype and q.shape[-1] % 2 == 0)


def rope_store_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rope: RopeInputs,
                      k_cache: torch.Tensor, v_cache: torch.Tensor, loc: torch.Tensor
                      ) -> torch.Tensor:
    """Norms (if rope has weights) and rotates q [T, Hq, D] in place and k [T, Hkv, D] into
    k_cache[loc]; copies v [T, Hkv, Dv] to v_cache[loc]. Returns q.

    k_cache/v_cache [slots, Hkv, D or Dv] contiguous; loc [T] slot ids; cos/sin [T, D/2].
    """
    if not _supported(q, k, v, rope, k_cache, v_cache):
        from rollserve.kernels.kv_store_triton import kv_store_triton
        from rollserve.kernels.rotary import rotate_qk_torch

        q, k = rotate_qk_torch(q, k, rope)
        kv_store_triton(k_cache, v_cache, loc, k, v)
        return q
    tokens, q_heads, dim = q.shape
    kv_heads, v_dim = v.shape[1], v.shape[2]
    has_norm = rope.q_norm_weight is not None
    if tokens:
        block_hq, block_half = next_power_of_2(q_heads), next_power_of_2(dim // 2)
        pdl = use_pdl(q)
        _rope_store_kernel[(tokens,)](
            q, k, v, rope.cos, rope.sin,
            rope.q_norm_weight if has_norm else q, rope.k_norm_weight if has_norm else k, rope.eps,
            k_cache, v_cache, loc, q_heads, kv_heads, dim // 2, v_dim,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
            rope.cos.stride(0),
            HAS_NORM=has_norm, BLOCK_HQ=block_hq, BLOCK_HKV=next_power_of_2(kv_heads),
            BLOCK_HALF=block_half, BLOCK_DV=next_power_of_2(v_dim), USE_PDL=pdl,
            num_warps=min(8, max(1, block_hq * block_half // 512)), **pdl_launch(pdl))
    return q
