"""SiLU(gate) * up over the fused [gate | up] projection, one pass."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from rollserve.kernels.dispatch import pdl_launch, use_pdl
from rollserve.kernels.pdl_triton import launch_dependents, wait_prior


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, inner, stride_x, BLOCK: tl.constexpr,
                         USE_PDL: tl.constexpr):
    row = tl.program_id(0)
    launch_dependents(USE_PDL)
    wait_prior(USE_PDL)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < inner
    base = x_ptr + row.to(tl.int64) * stride_x
    gate = tl.load(base + cols, mask=mask, other=0.0)
    up = tl.load(base + inner + cols, mask=mask, other=0.0)
    g32 = gate.to(tl.float32)
    # rounded to the input dtype before the product, as F.silu(gate) * up does
    silu = (g32 / (1.0 + tl.exp(-g32))).to(gate.dtype).to(tl.float32)
    tl.store(out_ptr + row.to(tl.int64) * inner + cols, (silu * up.to(tl.float32)).to(gate.dtype),
             mask=mask)


def silu_and_mul_triton(x: torch.Tensor) -> torch.Tensor:
    if x.stride(-1) != 1:
        x = x.contiguous()
    inner = x.shape[-1] // 2
    flat = x.reshape(-1, x.shape[-1])
    out = torch.empty(flat.shape[0], inner, dtype=x.dtype, device=x.device)
    if flat.shape[0]:
        block = 1024
        pdl = use_pdl(x)
        _silu_and_mul_kernel[(flat.shape[0], triton.cdiv(inner, block))](
            flat, out, inner, flat.stride(0), BLOCK=block, USE_PDL=pdl, num_warps=4,
            **pdl_launch(pdl))
    return out.view(*x.shape[:-1], inner)
