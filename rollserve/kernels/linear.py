"""Linear layers at decode batch sizes: the Triton GEMV (gemv_triton.py) for CUDA tensors with
at most MAX_GEMV_M rows, F.linear (cuBLAS) otherwise.

The GEMV serves one row only: on an H100 it beats cuBLAS at M = 1 but is 2-3x slower at M = 8
(bench/gemv). rmsnorm_linear and silu_mul_linear run the norm / activation kernel and then
`linear`; there is no fused prologue because the fused GEMV variants measured slower than the
two kernels in a row (docs/gpu.md).

ROLLSERVE_DISABLE_GEMV=1 keeps F.linear (A/B runs). With a residual, rmsnorm_linear returns
(y, x + residual) like rms_norm, whose CUDA (Triton) path overwrites `residual` in place: use
the returned one.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import torch.nn.functional as F

from rollserve.kernels.activation import silu_and_mul
from rollserve.kernels.dispatch import use_triton
from rollserve.kernels.norm import rms_norm

MAX_GEMV_M = 1
_GEMV_ENABLED = os.environ.get("ROLLSERVE_DISABLE_GEMV", "0") != "1"


def linear_torch(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None):
    return F.linear(x, weight, bias)


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
    """linear(rms_norm(x [+ residual])); with residual returns (y, x + residual)."""
    if residual is None:
        return linear(rms_norm(x, norm_weight, eps), weight, bias)
    normed, residual = rms_norm(x, norm_weight, eps, residual)
    return linear(normed, weight, bias), residual


def silu_mul_linear(gate_up: torch.Tensor, weight: torch.Tensor,
                    bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """linear(silu(gate) * up), gate and up the halves of gate_up's last dim."""
    return linear(silu_and_mul(gate_up), weight, bias)
