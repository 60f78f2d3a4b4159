"""Linear layers at decode batch sizes: the Triton GEMV (gemv_triton.py) for CUDA tensors with
at most MAX_GEMV_M rows, F.linear (cuBLAS) otherwise.

The GEMV serves one row only: on an H100 it beats cuBLAS at M = 1 but is 2-3x slower at M = 8
(bench/gemv). rmsnorm_linear runs the norm kernel (with the residual add), then the matmul,
then SiLU-and-mul when asked (the gate|up projection).

ROLLSERVE_GEMV_FUSION=1 runs the norm and the activation inside the one-row GEMV instead
(gemv_triton's prologue and epilogue). It is off by default: with programmatic dependent
launch the small norm / activation kernels overlap the GEMVs around them, and in the engine
(one_batch, H100, 2026-11-26) the fused path was 1% slower on the Llama-3.2-1B shape and 6%
slower on the 3.1-8B one. ROLLSERVE_DISABLE_GEMV=1 keeps F.linear (A/B runs).

With a residual, rmsnorm_linear returns (y, x + residual) like rms_norm, whose CUDA (Triton)
path overwrites `residual` in place: use the returned one.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import torch.nn.functional as F

from rollserve.kernels.batch_invariant import enabled as batch_invariant_on, linear as batch_invariant_linear
from rollserve.kernels.activation import silu_and_mul
from rollserve.kernels.dispatch import use_triton
from rollserve.kernels.norm import rms_norm

MAX_GEMV_M = 1
_GEMV_ENABLED = os.environ.get("ROLLSERVE_DISABLE_GEMV", "0") != "1"
_FUSED_GEMV = os.environ.get("ROLLSERVE_GEMV_FUSION", "0") == "1"


def linear_torch(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None):
    return F.linear(x, weight, bias)


def use_gemv(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """The GEMV serves CUDA (or interpreted) inputs of 1..MAX_GEMV_M rows in the weight's dtype."""
    rows = x.numel() // max(1, x.shape[-1])
    return (_GEMV_ENABLED and 0 < rows <= MAX_GEMV_M and x.dtype == weight.dtype and weight.dim() == 2
            and use_triton(x))


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None):
    if batch_invariant_on():  # --enable-deterministic-inference
        return batch_invariant_linear(x, weight, bias)
    if use_gemv(x, weight):
        from rollserve.kernels.gemv_triton import gemv

        return gemv(x, weight, bias)
    return F.linear(x, weight, bias)


def rmsnorm_linear(x: torch.Tensor, residual: Optional[torch.Tensor], norm_weight: torch.Tensor,
                   eps: float, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                   silu_mul: bool = False):
    """linear(rms_norm(x [+ residual])), then silu_and_mul when silu_mul; with residual
    returns (y, x + residual). With ROLLSERVE_GEMV_FUSION=1, one fused GEMV for a single row."""
    if use_gemv(x, weight) and _FUSED_GEMV and not batch_invariant_on():
        from rollserve.kernels.gemv_triton import NormPrologue, gemv

        return gemv(x, weight, bias, norm=NormPrologue(norm_weight, eps, residual), silu_mul=silu_mul)
    if residual is None:
        normed = rms_norm(x, norm_weight, eps)
    else:
        normed, residual = rms_norm(x, norm_weight, eps, residual)
    y = linear(normed, weight, bias)
    if silu_mul:
        y = silu_and_mul(y)
    return y if residual is None else (y, residual)
