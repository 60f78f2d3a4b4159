"""RMSNorm as one Triton program per row, with the residual add fused in.

Rounding follows `rms_norm_torch` step by step (sum rounded to the input dtype,
statistics in float32, normalized value rounded before the weight multiply), so
the kernel and the reference agree to the last bit in most rows.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from rollserve.kernels.dispatch import next_power_of_2, pdl_launch, use_pdl
from rollserve.kernels.pdl_triton import launch_dependents, wait_prior


@triton.jit
def _rms_norm_kernel(x_ptr, residual_ptr, weight_ptr, out_ptr, heads, stride_xt, stride_xh,
                     eps, dim, HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr,
                     USE_PDL: tl.constexpr):
    row = tl.program_id(0)
    launch_dependents(USE_PDL)
    wait_prior(USE_PDL)
    x_offset = (row // heads).to(tl.int64) * stride_xt + (row % heads) * stride_xh
    cols = tl.arange(0, BLOCK)
    mask = cols < dim
    x = tl.load(x_ptr + x_offset + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r_offset = row.to(tl.int64) * dim
        x = (x.to(tl.float32) + tl.load(residual_ptr + r_offset + cols, mask=mask,
                                        other=0.0).to(tl.float32)).to(x.dtype)
        tl.store(residual_ptr + r_offset + cols, x, mask=mask)
    x32 = x.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x32 * x32, axis=0) / dim + eps)
    normed = (x32 * rstd).to(x.dtype).to(tl.float32)
    weight = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row.to(tl.int64) * dim + cols, (normed * weight).to(x.dtype), mask=mask)


def triton_supports(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """The layouts the kernel takes: [T, D] or [T, H, D] with a contiguous last dim, weight in x's dtype."""
    return x.stride(-1) == 1 and x.dim() in (2, 3) and weight.dtype == x.dtype


def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float,
                    residual: Optional[torch.Tensor] = None):
    """Same contract as rms_norm_torch; with `residual`, the sum is written into `residual`
    in place and returned as the new residual. x may be a strided [T, D] or [T, H, D] view
    whose last dim is contiguous (Qwen3's per-head q/k norm)."""
    assert triton_supports(x, weight), "rms_norm dispatches other layouts to the torch reference"
    dim = x.shape[-1]
    heads = x.shape[1] if x.dim() == 3 else 1
    stride_h = x.stride(1) if x.dim() == 3 else 0
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if residual is not None:
        assert residual.is_contiguous() and residual.shape == x.shape and x.dim() == 2
    rows = x.shape[0] * heads
    if rows:
        block = next_power_of_2(dim)
        pdl = use_pdl(x)
        _rms_norm_kernel[(rows,)](x, residual if residual is not None else x, weight, out, heads,
                                  x.stride(0), stride_h, eps, dim,
                                  HAS_RESIDUAL=residual is not None, BLOCK=block, USE_PDL=pdl,
                                  num_warps=min(8, max(1, block // 256)), **pdl_launch(pdl))
    return out if residual is None else (out, residual)
