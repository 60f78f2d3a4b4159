"""Linear layers at decode batch sizes: the Triton GEMV (gemv_triton.py) for CUDA tensors with
at most MAX_GEMV_M rows, F.linear (cuBLAS) otherwise; plus the fused RMSNorm->linear and
SiLU-mul->linear pairs, whose torch references compose the existing ones with F.linear.

ROLLSERVE_DISABLE_GEMV=1 keeps F.linear and the separate norm/activation kernels (A/B runs).
With a residual, the fused norm returns (y, x + residual) like
rms_norm; the Triton path writes the new residual to a fresh tensor and leaves `residual`
untouched, the unfused CUDA path (Triton rms_norm) overwrites it: use the returned one.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import torch.nn.functional as F

from rollserve.kernels.activation import silu_and_mul, silu_and_mul_torch
from rollserve.kernels.dispatch import use_triton
from rollserve.kernels.norm import rms_norm, rms_norm_torch

MAX_GEMV_M = 8
_GEMV_ENABLED = os.environ.get("ROLLSERVE_DISABLE_GEMV", "0") != "1"


def linear_torch(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None):
    return F.linear(x, weight, bias)


def rmsnorm_linear_torch(x: torch.Tensor, residual: Optional[torch.Tensor], norm_weight: torch.Tensor,
                         eps: float, weight: torch.Tensor, bias: Optional[torch.Tensor] = None):
    """F.linear(rms_norm(x [+ residual])); with residual returns (y, x + residual)."""
    if residual is None:
        return F.linear(rms_norm_torch(x, norm_weight, eps), weight, bias)
    normed, residual = rms_norm_torch(x, norm_weight, eps, residual)
    return F.linear(normed, weight, bias), residual


def silu_mul_linear_torch(gate_up: torch.Tensor, weight: torch.Tensor,
                          bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    return F.linear(silu_and_mul_torch(gate_up), weight, bias)


def use_gemv(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """The GEMV serves CUDA (or interpreted) inputs of 1..MAX_GEMV_M rows in the weight's dtype."""
    rows = x.numel() // max(1, x.shape[-1])
    return (_GEMV_ENABLED and 0 < rows <= MAX_GEMV_M and x.dtype == weight.dtype and weight.dim() == 2
            and use_triton(x))


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None):
    if use_gemv(x, weight):
        from rollserve.kernels.gemv_triton import gemv

        return gemv(x, weight, bias)
    return F.linear(x, weight, bias)


def rmsnorm_linear(x: torch.Tensor, residual: Optional[torch.Tensor], norm_weight: torch.Tensor,
                   eps: float, weight: torch.Tensor, bias: Optional[torch.Tensor] = None):
    if use_gemv(x, weight) and norm_weight.dtype == x.dtype:
        from rollserve.kernels.gemv_triton import rmsnorm_gemv

        return rmsnorm_gemv(x, residual, norm_weight, eps, weight, bias)
    if residual is None:
        return F.linear(rms_norm(x, norm_weight, eps), weight, bias)
    normed, residual = rms_norm(x, norm_weight, eps, residual)
    return F.linear(normed, weight, bias), residual


def silu_mul_linear(gate_up: torch.Tensor, weight: torch.Tensor,
                    bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    if use_gemv(gate_up, weight):
        from rollserve.kernels.gemv_triton import silu_mul_gemv

        return silu_mul_gemv(gate_up, weight, bias)
    return F.linear(silu_and_mul(gate_up), weight, bias)
